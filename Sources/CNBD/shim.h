// libnbd, from libnbd-dev: an independent, real NBD client that tests and
// tools use to talk to znbd.
#include <libnbd.h>
