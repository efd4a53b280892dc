# SPDX-License-Identifier: MIT
# chunks.gp - per-item cost of an identity map vs chunksize.
set terminal pngcairo size 900,560 font ",10" noenhanced
set output out
set title "Per-item cost of a trivial map vs chunksize"
set logscale x 4
set logscale y
set grid
set key top right
set xlabel "chunksize (items per task)"
set ylabel "ns per item"
plot datadir."/chunks.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "forkpool fp_pool_map", \
     "" using 1:3 with linespoints lw 2 pt 5 lc rgb "#ff7f0e" title "Python Pool.map"
