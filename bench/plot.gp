# Plot of bench/run.sh's results: each figure beside its baseline (log
# scale), and their ratio.  Called with datafile, outfile and subtitle set;
# datafile has: "label" value baseline ratio, tab-separated.
set terminal pngcairo size 1500,1200 font "sans,10" noenhanced
set output outfile
set datafile separator "\t"
set multiplot layout 2,1 title "ledger benchmark: figure vs baseline (".subtitle.")"

set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set xtics rotate by -35 left font ",8" nomirror
set key top left
set lmargin 12
set rmargin 24
set bmargin 14

set title "throughput (log scale)"
set logscale y
set ylabel "per second"
plot datafile using 2:xtic(1) title "ledger" lc rgb "#2c7fb8", \
     "" using 3 title "baseline" lc rgb "#bdbdbd"

set title "ratio: figure / baseline (log scale; above the dashed line the ledger is ahead)"
set ylabel "ratio"
plot datafile using 4:xtic(1) title "ratio" lc rgb "#31a354", \
     1 with lines dt 2 lc rgb "black" title "1.0"

unset multiplot
