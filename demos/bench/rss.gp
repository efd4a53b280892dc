# SPDX-License-Identifier: MIT
# rss.gp - master peak RSS vs item count: fp_pool_map (input and output
# arrays grow with n) and a producer-fed fp_pool_imap_producer (bounded).
set terminal pngcairo size 900,560 font ",10" noenhanced
set output out
set title "Master peak RSS (fresh process per point)"
set logscale x
set xtics ("10k" 1e4, "100k" 1e5, "1M" 1e6, "10M" 1e7)
# A margin on both sides: a point on the border loses its tick label.
set xrange [7e3:1.4e7]
set grid
set key top left
set xlabel "items n"
set ylabel "peak RSS (MiB)"
set yrange [0:*]
plot datadir."/rss.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "fp_pool_map", \
     "" using 1:3 with linespoints lw 2 pt 5 lc rgb "#2ca02c" title "fp_pool_imap_producer"
