# SPDX-License-Identifier: MIT
# speedup.gp - speedup vs workers per CPU kernel: forkpool, OpenMP and the
# ideal line (speedup = workers up to the usable CPUs, flat beyond).
# Called by report.py: gnuplot -e "datadir='...'; out='...png'; cores=N"
set terminal pngcairo size 1100,800 font ",10" noenhanced
set output out
set multiplot layout 2,2 title "Speedup over the sequential loop (".cores." usable CPUs)"
set key top left
set grid
set xlabel "workers / threads"
set ylabel "speedup"
set xtics 1
# Room above the highest line: autoscaling stops at the tick nearest the
# data (2 for two CPUs), which put the ideal line on the border and cut it.
set yrange [0:*]
set offsets 0, 0, graph 0.12, 0
do for [k in "cumsum bogosort kmeans forest"] {
  set title k
  plot datadir."/speedup_".k.".dat" using 1:2 with lines dt 2 lc rgb "gray40" title "ideal", \
       "" using 1:3 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "forkpool", \
       "" using 1:4 with linespoints lw 2 pt 5 lc rgb "#d62728" title "OpenMP"
}
unset multiplot
