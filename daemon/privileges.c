/* SPDX-License-Identifier: MIT */
#include "privileges.h"

#include <errno.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int privileges_drop_all(void) {
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[2];

        /* the bounding set needs CAP_SETPCAP to shrink; without it there is nothing in it
         * we could use anyway once permitted is empty */
        for (int cap = 0; cap <= 63; cap++)
                if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)
                        (void) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
                return -errno;
        memset(data, 0, sizeof(data));
        if (syscall(SYS_capset, &hdr, data) < 0)
                return -errno;
        return 0;
}

int privileges_effective(unsigned long long *ret) {
        char line[256];
        FILE *f = fopen("/proc/self/status", "re");
        int r = -ENOENT;

        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "CapEff: %llx", ret) == 1) {
                        r = 0;
                        break;
                }
        fclose(f);
        return r;
}
