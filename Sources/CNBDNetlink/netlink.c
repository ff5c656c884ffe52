#define _GNU_SOURCE
#include <errno.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "CNBDNetlink.h"

// A request is built in one buffer: nlmsghdr, genlmsghdr, then attributes,
// each padded to 4 bytes (NLA_ALIGN). 4 KiB holds a CONNECT with the most
// sockets the kernel's nbd accepts here (one attribute of 8 bytes each).
enum { BUFFER_BYTES = 8192 };

typedef struct {
    char bytes[BUFFER_BYTES] __attribute__((aligned(8)));
    size_t length;
} message;

static struct nlmsghdr *header(message *m) { return (struct nlmsghdr *)m->bytes; }

static void begin(message *m, uint16_t type, uint8_t command, uint32_t sequence) {
    memset(m->bytes, 0, NLMSG_HDRLEN + GENL_HDRLEN);
    struct nlmsghdr *h = header(m);
    h->nlmsg_type = type;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    h->nlmsg_seq = sequence;
    struct genlmsghdr *g = (struct genlmsghdr *)(m->bytes + NLMSG_HDRLEN);
    g->cmd = command;
    g->version = type == GENL_ID_CTRL ? 1 : NBD_GENL_VERSION;
    m->length = NLMSG_HDRLEN + GENL_HDRLEN;
}

// Appends an attribute; returns its start (for a nest), or NULL when full.
static struct nlattr *put(message *m, uint16_t type, const void *data, size_t size) {
    size_t total = NLA_HDRLEN + size;
    if (m->length + NLA_ALIGN(total) > BUFFER_BYTES) return NULL;
    struct nlattr *a = (struct nlattr *)(m->bytes + m->length);
    a->nla_type = type;
    a->nla_len = (uint16_t)total;
    if (size) memcpy((char *)a + NLA_HDRLEN, data, size);
    memset((char *)a + total, 0, NLA_ALIGN(total) - total);
    m->length += NLA_ALIGN(total);
    return a;
}

static int put_u32(message *m, uint16_t type, uint32_t value) { return put(m, type, &value, 4) ? 0 : -EMSGSIZE; }
static int put_u64(message *m, uint16_t type, uint64_t value) { return put(m, type, &value, 8) ? 0 : -EMSGSIZE; }

static struct nlattr *begin_nest(message *m, uint16_t type) { return put(m, type | NLA_F_NESTED, NULL, 0); }
static void end_nest(message *m, struct nlattr *nest) { nest->nla_len = (uint16_t)(m->bytes + m->length - (char *)nest); }

static int put_sockets(message *m, const int *fds, int count) {
    struct nlattr *sockets = begin_nest(m, NBD_ATTR_SOCKETS);
    if (!sockets) return -EMSGSIZE;
    for (int i = 0; i < count; i++) {
        struct nlattr *item = begin_nest(m, NBD_SOCK_ITEM);
        if (!item || put_u32(m, NBD_SOCK_FD, (uint32_t)fds[i]) != 0) return -EMSGSIZE;
        end_nest(m, item);
    }
    end_nest(m, sockets);
    return 0;
}

static int send_message(znbd_netlink *handle, message *m) {
    header(m)->nlmsg_len = (uint32_t)m->length;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    for (;;) {
        ssize_t sent = sendto(handle->fd, m->bytes, m->length, 0, (struct sockaddr *)&kernel, sizeof kernel);
        if (sent == (ssize_t)m->length) return 0;
        if (sent < 0 && errno == EINTR) continue;
        return sent < 0 ? -errno : -EIO;
    }
}

// Calls `reply` on each message answering `sequence` until the kernel's ack
// (NLMSG_ERROR), whose error it returns. Multicast events that arrive
// meanwhile on a listening handle are skipped: the caller asks again.
static int receive_until_ack(znbd_netlink *handle, uint32_t sequence,
                             void (*reply)(struct nlmsghdr *, void *), void *context) {
    char buffer[BUFFER_BYTES] __attribute__((aligned(8)));
    for (;;) {
        ssize_t received = recv(handle->fd, buffer, sizeof buffer, 0);
        if (received < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        int left = (int)received;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buffer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != sequence) continue;
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *error = NLMSG_DATA(h);
                return error->error;
            }
            if (reply) reply(h, context);
        }
    }
}

static int request(znbd_netlink *handle, message *m, void (*reply)(struct nlmsghdr *, void *), void *context) {
    int status = send_message(handle, m);
    return status ? status : receive_until_ack(handle, header(m)->nlmsg_seq, reply, context);
}

// The attributes of a generic netlink message, or of a nest, one by one.
#define FOR_EACH_ATTRIBUTE(a, start, length)                                          \
    for (struct nlattr *a = (struct nlattr *)(start); (length) >= (int)NLA_HDRLEN &&    \
                                                      a->nla_len >= NLA_HDRLEN &&       \
                                                      a->nla_len <= (length);           \
         (length) -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))

typedef struct {
    uint16_t family;
    uint32_t group;
} family_reply;

static void read_family(struct nlmsghdr *h, void *context) {
    family_reply *found = context;
    int length = (int)h->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
    FOR_EACH_ATTRIBUTE(a, (char *)NLMSG_DATA(h) + GENL_HDRLEN, length) {
        void *data = (char *)a + NLA_HDRLEN;
        uint16_t type = a->nla_type & NLA_TYPE_MASK;
        if (type == CTRL_ATTR_FAMILY_ID) {
            memcpy(&found->family, data, 2);
        } else if (type == CTRL_ATTR_MCAST_GROUPS) {
            int groups = a->nla_len - NLA_HDRLEN;
            FOR_EACH_ATTRIBUTE(group, data, groups) {
                int fields = group->nla_len - NLA_HDRLEN;
                const char *name = NULL;
                uint32_t id = 0;
                FOR_EACH_ATTRIBUTE(field, (char *)group + NLA_HDRLEN, fields) {
                    void *value = (char *)field + NLA_HDRLEN;
                    if ((field->nla_type & NLA_TYPE_MASK) == CTRL_ATTR_MCAST_GRP_NAME) name = value;
                    if ((field->nla_type & NLA_TYPE_MASK) == CTRL_ATTR_MCAST_GRP_ID) memcpy(&id, value, 4);
                }
                if (name && strcmp(name, NBD_GENL_MCAST_GROUP_NAME) == 0) found->group = id;
            }
        }
    }
}

int znbd_netlink_open(znbd_netlink *handle, int listen) {
    memset(handle, 0, sizeof *handle);
    handle->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (handle->fd < 0) return -errno;
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(handle->fd, (struct sockaddr *)&local, sizeof local) != 0) {
        int error = -errno;
        close(handle->fd);
        return error;
    }
    message m;
    begin(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, ++handle->sequence);
    family_reply found = {0, 0};
    int status = put(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, sizeof NBD_GENL_FAMILY_NAME) ? 0 : -EMSGSIZE;
    if (status == 0) status = request(handle, &m, read_family, &found);
    if (status == 0 && found.family == 0) status = -ENOENT;
    if (status == 0 && listen) {
        if (found.group == 0) {
            status = -ENOENT;
        } else if (setsockopt(handle->fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &found.group, sizeof found.group)) {
            status = -errno;
        }
    }
    if (status != 0) {
        close(handle->fd);
        handle->fd = -1;
        return status;
    }
    handle->family = found.family;
    handle->group = found.group;
    return 0;
}

void znbd_netlink_close(znbd_netlink *handle) {
    if (handle->fd >= 0) close(handle->fd);
    handle->fd = -1;
}

static void read_index(struct nlmsghdr *h, void *context) {
    int length = (int)h->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
    FOR_EACH_ATTRIBUTE(a, (char *)NLMSG_DATA(h) + GENL_HDRLEN, length) {
        if ((a->nla_type & NLA_TYPE_MASK) == NBD_ATTR_INDEX) {
            uint32_t index;
            memcpy(&index, (char *)a + NLA_HDRLEN, 4);
            *(int *)context = (int)index;
        }
    }
}

int znbd_netlink_connect(znbd_netlink *handle, int index, uint64_t size, uint64_t block_size,
                         uint64_t server_flags, uint64_t timeout, uint64_t dead_connection_timeout,
                         const int *fds, int count, int *connected) {
    message m;
    begin(&m, handle->family, NBD_CMD_CONNECT, ++handle->sequence);
    int status = 0;
    if (index >= 0) status = put_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
    if (!status) status = put_u64(&m, NBD_ATTR_SIZE_BYTES, size);
    if (!status) status = put_u64(&m, NBD_ATTR_BLOCK_SIZE_BYTES, block_size);
    if (!status) status = put_u64(&m, NBD_ATTR_SERVER_FLAGS, server_flags);
    if (!status && timeout) status = put_u64(&m, NBD_ATTR_TIMEOUT, timeout);
    if (!status && dead_connection_timeout)
        status = put_u64(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, dead_connection_timeout);
    if (!status) status = put_sockets(&m, fds, count);
    if (status) return status;
    *connected = index;
    return request(handle, &m, read_index, connected);
}

int znbd_netlink_reconfigure(znbd_netlink *handle, int index, const int *fds, int count) {
    message m;
    begin(&m, handle->family, NBD_CMD_RECONFIGURE, ++handle->sequence);
    int status = put_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
    if (!status) status = put_sockets(&m, fds, count);
    return status ? status : request(handle, &m, NULL, NULL);
}

int znbd_netlink_disconnect(znbd_netlink *handle, int index) {
    message m;
    begin(&m, handle->family, NBD_CMD_DISCONNECT, ++handle->sequence);
    int status = put_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
    return status ? status : request(handle, &m, NULL, NULL);
}

// NBD_CMD_STATUS's answer: NBD_ATTR_DEVICE_LIST, a nest of NBD_DEVICE_ITEM
// nests, each with NBD_DEVICE_INDEX (u32) and NBD_DEVICE_CONNECTED (u8).
typedef struct {
    int index;
    int connected;
} status_reply;

static void read_status(struct nlmsghdr *h, void *context) {
    status_reply *found = context;
    int length = (int)h->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
    FOR_EACH_ATTRIBUTE(list, (char *)NLMSG_DATA(h) + GENL_HDRLEN, length) {
        if ((list->nla_type & NLA_TYPE_MASK) != NBD_ATTR_DEVICE_LIST) continue;
        int items = list->nla_len - NLA_HDRLEN;
        FOR_EACH_ATTRIBUTE(item, (char *)list + NLA_HDRLEN, items) {
            int fields = item->nla_len - NLA_HDRLEN;
            uint32_t index = UINT32_MAX;
            uint8_t connected = 0;
            FOR_EACH_ATTRIBUTE(field, (char *)item + NLA_HDRLEN, fields) {
                void *value = (char *)field + NLA_HDRLEN;
                if ((field->nla_type & NLA_TYPE_MASK) == NBD_DEVICE_INDEX) memcpy(&index, value, 4);
                if ((field->nla_type & NLA_TYPE_MASK) == NBD_DEVICE_CONNECTED) memcpy(&connected, value, 1);
            }
            if (index == (uint32_t)found->index) found->connected = connected ? 1 : 0;
        }
    }
}

int znbd_netlink_status(znbd_netlink *handle, int index, int *connected) {
    message m;
    begin(&m, handle->family, NBD_CMD_STATUS, ++handle->sequence);
    int status = put_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
    status_reply found = {index, -1};
    if (!status) status = request(handle, &m, read_status, &found);
    *connected = found.connected;
    return status;
}

int znbd_netlink_next_event(znbd_netlink *handle, int timeout_ms, int *command, int *index) {
    struct pollfd wait = {.fd = handle->fd, .events = POLLIN};
    int ready = poll(&wait, 1, timeout_ms);
    if (ready < 0) return -errno;
    if (ready == 0) return -ETIMEDOUT;
    char buffer[BUFFER_BYTES] __attribute__((aligned(8)));
    ssize_t received = recv(handle->fd, buffer, sizeof buffer, MSG_DONTWAIT);
    if (received < 0) return errno == EAGAIN ? -ETIMEDOUT : -errno;
    int left = (int)received;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buffer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
        if (h->nlmsg_type != handle->family) continue;
        struct genlmsghdr *g = NLMSG_DATA(h);
        *command = g->cmd;
        *index = -1;
        read_index(h, index);
        return 0;
    }
    return -ETIMEDOUT;
}

int znbd_netlink_link_dead_command(void) { return NBD_CMD_LINK_DEAD; }
