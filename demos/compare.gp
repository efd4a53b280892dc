# SPDX-License-Identifier: MIT
# compare.gp - the seeds' "time against number of workers" chart for
# bogosort, C (forkpool) and Python (joblib) on one plot. Called by
# demos/compare.sh:
#   gnuplot -e "datadir='...'; out='...png'; cpus=N; cseq=..; pseq=..;
#               citems=..; pitems=.." demos/compare.gp
# The twins sort different numbers of arrays (C 1000, Python 100 by
# default), so the y axis is the time per array, on a log scale: the two
# languages are ~50x apart. The dashed lines are the ideal: the sequential
# time per array divided by the workers, down to the usable CPUs.
set terminal pngcairo size 900,560 font ",10" noenhanced
set output out
set title sprintf("bogosort: time against number of workers (%d usable CPUs)", cpus)
set logscale y
set grid
set key below
set xlabel "workers (one partition each)"
set ylabel "ms per array (median of the runs)"
set xtics 1
set xrange [0.7:2*cpus+0.3]
ideal(seq, w) = seq / (w < cpus ? w : cpus)
plot datadir."/workers_C.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" \
       title sprintf("C, forkpool (%d arrays)", citems), \
     "" using 1:(ideal(cseq, $1)) with lines dt 2 lc rgb "#1f77b4" title "C, ideal", \
     datadir."/workers_Python.dat" using 1:2 with linespoints lw 2 pt 5 lc rgb "#ff7f0e" \
       title sprintf("Python, joblib (%d arrays)", pitems), \
     "" using 1:(ideal(pseq, $1)) with lines dt 2 lc rgb "#ff7f0e" title "Python, ideal"
