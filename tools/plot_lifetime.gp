# Renders the lifetime study's summary (examples/results/lifetime_summary.csv,
# written by examples/lifetime.cpp) as lifetime.png. tools/lifetime.sh runs it:
#   gnuplot -e "dir='examples/results'" tools/plot_lifetime.gp
# Summary columns: 1 preset, 2 time_s, 3 method, 4 n, 5 mean, 6 std, 7 min, 8 max,
# 9 field_samples, 10 recalibrations, 11 sram_bytes, 12 energy_j, 13 latency_s.
if (!exists("dir")) dir = 'examples/results'
set datafile separator ','
set terminal pngcairo size 1500,1100 font ',11'
set output dir.'/lifetime.png'
set grid
set logscale x
set xrange [0.5:5e8]
set yrange [80:94]
set xtics ('1 s' 1, '1 min' 60, '1 h' 3600, '1 day' 86400, '1 wk' 604800, '1 mo' 2.63e6, '1 y' 3.16e7, '10 y' 3.16e8)
set xlabel 'time since programming'
set ylabel 'top-1 on the 10k test set (%)'
set key bottom left font ',9' maxrows 6

rows(p, m) = sprintf("< awk -F, 'NR > 1 && $1 == \"%s\" && $3 == \"%s\"' %s/lifetime_summary.csv | sort -t, -g -k2", p, m, dir)
ideal = sprintf("< awk -F, '$3 == \"ideal\"' %s/lifetime_summary.csv", dir)
array methods[10] = ['none', 'global_comp', 'column_comp', 'bn_recal', 'dora_field', 'lora_field', 'vera_field', 'vera_offline', 'dora_offline', 'dora_budget']
array labels[10] = ['drifted', 'global compensation', 'per-column compensation', 'BN recalibration (N=10)', 'DoRA r=2, field (N=10)', 'LoRA r=2, field (N=10)', 'VeRA, field (N=10)', 'VeRA+ offline schedule', 'DoRA offline schedule', 'DoRA, 1/4 bytes, field']
array colours[10] = ['#d62728', '#8c564b', '#1f77b4', '#17becf', '#2ca02c', '#bcbd22', '#e377c2', '#9467bd', '#ff7f0e', '#7f7f7f']
array points[10] = [7, 4, 5, 6, 13, 8, 10, 11, 9, 12]

set multiplot layout 2,2 title 'ResNet-20 / Fashion-MNIST over a chip''s life (mean +- std over 5 chips; offline sets trained on other simulated chips)'
do for [p in 'cmo pcm neurram relative'] {
  set title (p eq 'cmo' ? 'HfOx/CMO ReRAM, log-time relaxation' : p eq 'pcm' ? 'PCM-like power-law drift' : p eq 'neurram' ? 'NeuRRAM measured relaxation (table up to 2 days)' : 'relative drift, rho = 0.2 at 1 day (no systematic part)')
  plot ideal using (0.5):5:(5e8):(0) with vectors nohead dt 2 lc 'black' title 'ideal (digital)', \
       for [i=1:10] rows(p, methods[i]) using 2:5:6 with yerrorlines pt points[i] ps 0.9 lc rgb colours[i] lw (i == 5 || i == 8 ? 2 : 1) title labels[i]
}
unset multiplot
