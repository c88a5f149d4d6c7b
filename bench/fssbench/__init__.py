"""fssbench: the modules behind bench/run (fss beside its peers, over NBD).

  config     command line and environment, read once; repository paths
  util       logging, failing, commands, the processes started here (by PID)
  control    the one client of the fss control protocol (docs/CONTROL.md)
  servers    building fss, starting fss and the peers, QMP, tool versions
  workloads  fio/nbdcopy workloads and how one sample is taken
  cases      cases 1-5 and 8 (throughput ratios)
  case67     cases 6 and 7 (snapshot creation, restart, memory) on a second daemon
  report     row arithmetic (ratios, medians, ±, goals), the table, the JSON
  bench      the run: work dir, main daemon, cases in order, clean-up
  cli        flags, required tools, signals
"""
