// CLinux: the few glibc calls Swift's Glibc module does not export because
// they need _GNU_SOURCE.
#ifndef ZNBD_CLINUX_H
#define ZNBD_CLINUX_H

/// The CPU the calling thread runs on now (sched_getcpu), or -1.
int clinux_current_cpu(void);

#endif
