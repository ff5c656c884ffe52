// CNBDNetlink: the kernel NBD driver's generic netlink interface
// (include/uapi/linux/nbd-netlink.h), spoken over a raw NETLINK_GENERIC
// socket, for `znbdctl attach`: connect a /dev/nbdN to sockets that have
// done their NBD handshake, hear that a connection died (NBD_CMD_LINK_DEAD),
// hand the kernel new sockets for the dead ones (NBD_CMD_RECONFIGURE), ask
// whether a device is connected (NBD_CMD_STATUS), and disconnect. What
// nbd-client does with libnl, without libnl.
//
// Every function returns 0 or a negative errno. Requests are answered by
// the kernel's ack (NLMSG_ERROR); its error is returned as is. Not thread
// safe: one thread per handle.
#pragma once
#include <stdint.h>

typedef struct {
    int fd;
    uint16_t family;
    uint32_t group;
    uint32_t sequence;
} znbd_netlink;

/// Opens a handle and finds the "nbd" family (-ENOENT: the nbd module is not
/// loaded). With `listen`, joins the family's multicast group, to receive
/// NBD_CMD_LINK_DEAD with `znbd_netlink_next_event`.
int znbd_netlink_open(znbd_netlink *handle, int listen);

void znbd_netlink_close(znbd_netlink *handle);

/// NBD_CMD_CONNECT: device `index` (or the first free one when negative;
/// `*connected` says which) of `size` bytes in blocks of `block_size`, with
/// the server's transmission flags, the request timeout and the time the
/// kernel waits for a dead connection to be replaced (both in seconds, 0:
/// the kernel's default, and no wait), over the `count` sockets in `fds`.
int znbd_netlink_connect(znbd_netlink *handle, int index, uint64_t size, uint64_t block_size,
                         uint64_t server_flags, uint64_t timeout, uint64_t dead_connection_timeout,
                         const int *fds, int count, int *connected);

/// NBD_CMD_RECONFIGURE of device `index`: each socket of `fds` replaces one
/// the kernel has marked dead (one it has not marked dead yet is not
/// replaced, and the kernel still answers 0).
int znbd_netlink_reconfigure(znbd_netlink *handle, int index, const int *fds, int count);

/// NBD_CMD_DISCONNECT of device `index`.
int znbd_netlink_disconnect(znbd_netlink *handle, int index);

/// NBD_CMD_STATUS of device `index`: `*connected` is 1 when the kernel
/// holds a configuration for it (connected, or waiting for a dead
/// connection to be replaced), 0 when not, -1 when the device does not exist.
int znbd_netlink_status(znbd_netlink *handle, int index, int *connected);

/// Waits up to `timeout_ms` (-1: for ever) for a multicast event of the
/// family: 0 with `*command` (NBD_CMD_LINK_DEAD, ...) and `*index` (-1 when
/// the event names none), -ETIMEDOUT, -EINTR (a signal), or another error.
/// -ENOBUFS means events were lost (the socket's buffer overran).
int znbd_netlink_next_event(znbd_netlink *handle, int timeout_ms, int *command, int *index);

/// The NBD_CMD_LINK_DEAD command number, for callers that compare.
int znbd_netlink_link_dead_command(void);
