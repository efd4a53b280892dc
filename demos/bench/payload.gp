# payload.gp - round-trip throughput vs payload size (both directions
# counted) for forkpool and Python, with the raw pipe (one direction) and
# memcpy bandwidths as horizontal baselines.
set terminal pngcairo size 900,560 font ",10" noenhanced
set output out
set title "Payload throughput: map of bytes values, chunksize 1"
set logscale x 2
set logscale y
set grid
set key bottom right
set xlabel "payload size (bytes)"
set ylabel "MiB/s (2 x size per item)"
set xtics ("8 B" 8, "64 B" 64, "512 B" 512, "4 KiB" 4096, "32 KiB" 32768, \
  "256 KiB" 262144, "1 MiB" 1048576, "4 MiB" 4194304, "16 MiB" 16777216)
plot datadir."/payload.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "forkpool", \
     "" using 1:3 with linespoints lw 2 pt 5 lc rgb "#ff7f0e" title "Python Pool.map", \
     "" using 1:4 with lines dt 2 lw 2 lc rgb "gray30" title "raw pipe (one direction)", \
     "" using 1:5 with lines dt 3 lw 2 lc rgb "#2ca02c" title "memcpy"
