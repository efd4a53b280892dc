# SPDX-License-Identifier: MIT
# payload.gp - throughput vs payload size for forkpool and Python, with
# the raw pipe and memcpy bandwidths as horizontal baselines. The pipe line
# is one direction, so the map's figures (which count each item's bytes
# twice, out and back) are halved: every line is bytes per second in one
# direction. The x range has a margin so that both end ticks are drawn.
set terminal pngcairo size 900,560 font ",10" noenhanced
set output out
set title "Payload throughput per direction: map of bytes values, chunksize 1"
set logscale x 2
set logscale y
set grid
set key bottom right
set xlabel "payload size (bytes)"
set xrange [5:27000000]
set ylabel "MiB/s each way (payload size x items/s)"
set xtics ("8 B" 8, "64 B" 64, "512 B" 512, "4 KiB" 4096, "32 KiB" 32768, \
  "256 KiB" 262144, "1 MiB" 1048576, "4 MiB" 4194304, "16 MiB" 16777216)
plot datadir."/payload.dat" using 1:($2/2) with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "forkpool (out and back, per direction)", \
     "" using 1:($3/2) with linespoints lw 2 pt 5 lc rgb "#ff7f0e" title "Python Pool.map (per direction)", \
     "" using 1:4 with lines dt 2 lw 2 lc rgb "gray30" title "raw pipe, one direction, 64 KiB writes", \
     "" using 1:5 with lines dt 3 lw 2 lc rgb "#2ca02c" title "memcpy"
