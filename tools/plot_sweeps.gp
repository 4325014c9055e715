# Renders the calibration sweeps' summaries (examples/results/*_summary.csv,
# written by examples/calibration_sweeps.cpp) as PNGs. tools/sweeps.sh runs it:
#   gnuplot -e "dir='examples/results'" tools/plot_sweeps.gp
# Summary columns: 1 preset, 2 g_min_ratio, 3 rho, 4 time_s, 5 samples, 6 rank,
# 7 method, 8 setting, 9 n, 10 mean, 11 std, 12 min, 13 max, 14 mean_seconds.
if (!exists("dir")) dir = 'examples/results'
set datafile separator ','
set terminal pngcairo size 1200,480 font ',11'
set grid
set offsets graph 0, graph 0, graph 0.06, graph 0.04
set key bottom left
set ylabel 'top-1 accuracy on the 10k test set (%)'

# Rows of `file` whose method column is `m` (and extra awk condition `c`), sorted by column `x`.
rows(file, m, c, x) = sprintf("< awk -F, 'NR > 1 && $7 == \"%s\" && (%s)' %s/%s | sort -t, -g -k%d", m, c, dir, file, x)
ideal(file) = sprintf("< awk -F, '$7 == \"ideal\"' %s/%s", dir, file)

# Accuracy vs relative drift, before and after calibration (paper Fig. 2).
set output dir.'/rho.png'
set multiplot layout 1,2 title 'ResNet-20 / Fashion-MNIST: accuracy vs relative drift (N = 10, rank 2; mean +- std over drift seeds)'
set xlabel 'relative drift rho'
set xrange [-0.01:0.31]
do for [g in '0 0.1'] {
  set title (g eq '0' ? 'ideal mapping, g_{min} = 0' : 'realistic mapping, g_{min} = g_{max} / 10')
  cond = sprintf('$2 == %s', g)
  plot ideal('rho_summary.csv') using (0):10:(0.3):(0) with vectors nohead dt 2 lc 'black' title 'ideal (digital)', \
       rows('rho_summary.csv', 'drifted', cond, 3) using 3:10:11 with yerrorlines pt 7 lc '#d62728' title 'drifted', \
       rows('rho_summary.csv', 'compensated', cond, 3) using 3:10:11 with yerrorlines pt 5 lc '#1f77b4' title 'per-column compensation', \
       rows('rho_summary.csv', 'backprop', cond, 3) using 3:10:11 with yerrorlines pt 9 lc '#ff7f0e' title 'DoRA, backprop', \
       rows('rho_summary.csv', 'feature_kd', cond, 3) using 3:10:11 with yerrorlines pt 13 lw 2 lc '#2ca02c' title 'DoRA, feature KD', \
       rows('rho_summary.csv', 'feature_kd_teacher_norms', cond, 3) using 3:10:11 with yerrorlines pt 11 dt 3 lc '#9467bd' title 'feature KD, m from teacher'
}
unset multiplot

# Accuracy vs time since programming for the device presets.
set output dir.'/time.png'
set multiplot layout 1,2 title 'ResNet-20 / Fashion-MNIST: accuracy vs time since programming (N = 10, rank 2)'
set xlabel 'time since programming (s)'
set logscale x
set xrange [0.5:5e8]
set xtics ('1 s' 1, '1 min' 60, '1 h' 3600, '1 day' 86400, '1 month' 2.63e6, '1 y' 3.16e7, '10 y' 3.16e8)
do for [p in 'cmo neurram'] {
  set title (p eq 'cmo' ? 'HfOx/CMO ReRAM (9-88 uS, log-time relaxation)' : 'NeuRRAM (1-40 uS, measured relaxation; held after 2 days)')
  cond = sprintf('$1 == "%s"', p)
  plot ideal('time_summary.csv') using (0.5):10:(5e8):(0) with vectors nohead dt 2 lc 'black' title 'ideal (digital)', \
       rows('time_summary.csv', 'drifted', cond, 4) using 4:10:11 with yerrorlines pt 7 lc '#d62728' title 'drifted', \
       rows('time_summary.csv', 'compensated', cond, 4) using 4:10:11 with yerrorlines pt 5 lc '#1f77b4' title 'per-column compensation', \
       rows('time_summary.csv', 'feature_kd', cond, 4) using 4:10:11 with yerrorlines pt 13 lw 2 lc '#2ca02c' title 'DoRA, feature KD'
}
unset multiplot
unset xtics
set xtics

# Accuracy vs number of calibration samples (paper Fig. 4/5).
set output dir.'/samples.png'
set multiplot layout 1,2 title 'ResNet-20 / Fashion-MNIST at 20% relative drift: accuracy vs calibration samples N'
set xlabel 'calibration samples N'
set xrange [0.8:130]
set xtics (1, 2, 5, 10, 20, 50, 100)
do for [r in '2 4'] {
  set title sprintf('rank %s', r)
  cond = sprintf('$6 == %s', r)
  plot ideal('samples_summary.csv') using (0.8):10:(130):(0) with vectors nohead dt 2 lc 'black' title 'ideal (digital)', \
       rows('samples_summary.csv', 'drifted', '1', 5) using (0.8):10:(130):(0) with vectors nohead dt 3 lc '#d62728' title 'drifted (mean)', \
       rows('samples_summary.csv', 'backprop', cond, 5) using 5:10:11 with yerrorlines pt 9 lc '#ff7f0e' title 'DoRA, backprop', \
       rows('samples_summary.csv', 'feature_kd', cond, 5) using 5:10:11 with yerrorlines pt 13 lw 2 lc '#2ca02c' title 'DoRA, feature KD'
}
unset multiplot
