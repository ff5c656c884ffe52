#define _GNU_SOURCE
#include <sched.h>
#include "CSystem.h"

int csystem_current_cpu(void) { return sched_getcpu(); }
