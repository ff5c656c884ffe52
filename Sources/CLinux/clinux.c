#define _GNU_SOURCE
#include <sched.h>
#include "CLinux.h"

int clinux_current_cpu(void) { return sched_getcpu(); }
