# Plot of bench/cluster.sh's projection: transfers/s of a cluster against
# its number of nodes, one line per cross-node fraction, and the line of
# perfect scaling from one node.  Called with datafile, outfile, fvalues
# (the fractions, space-separated, in the data's column order) and subtitle
# set; datafile has: nodes, then transfers/s for each fraction,
# tab-separated.
set terminal pngcairo size 1000,700 font "sans,10" noenhanced
set output outfile
set datafile separator "\t"
set title "ledger cluster: projected transfers/s from measured CPU costs (".subtitle.")\nCPU-bound; proxies and clients on machines of their own; f = share of transfers whose payee is on another node"
set logscale x 2
set logscale y 2
set xtics ("1" 1, "2" 2, "4" 4, "8" 8)
set xrange [0.9:9]
set ytics ("500" 500, "1,000" 1000, "2,000" 2000, "4,000" 4000, "8,000" 8000, "16,000" 16000, "32,000" 32000, "64,000" 64000, "128,000" 128000)
set grid xtics ytics
set key top left
set xlabel "nodes"
set ylabel "transfers/s (log scale)"

nf = words(fvalues)
# the one-node figure, the first row's first fraction
stats datafile every ::0::0 using 2 nooutput
single = STATS_max

plot for [i=1:nf] datafile using 1:(column(i + 1)) with linespoints lw 2 pt 7 lc i \
		title sprintf("f = %s", word(fvalues, i)), \
	single * x with lines dt 3 lc rgb "black" title "perfect scaling from one node"
