// CSystem: the few glibc calls Swift's Glibc module does not export because
// they need _GNU_SOURCE.
#ifndef ZNBD_CSYSTEM_H
#define ZNBD_CSYSTEM_H

/// The CPU the calling thread runs on now (sched_getcpu), or -1.
int csystem_current_cpu(void);

#endif
