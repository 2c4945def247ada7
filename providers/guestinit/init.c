/*
 * fleet guest init: PID 1 of every microVM, run from the initramfs the agent
 * builds. It never lives in (or modifies) the image: it loads the virtio
 * modules, mounts the image's root filesystem, configures the network, moves
 * the root over "/", and runs the app the way `docker run` would, with the
 * argv, environment, uid/gid and working directory the host computed from the
 * OCI config plus the App's overrides (providers/guestinit/launch.py).
 *
 * Protocol with the host, over the serial console (/dev/console):
 *   init -> host  lines "FLEET:<nonce>:<event> key=value ..." (events: boot,
 *                 root, net, start, stop, kill, exit, error)
 *   host -> init  a line "FLEET-STOP <signal> <timeout_ms>": send <signal> to
 *                 the app, SIGKILL it after <timeout_ms>.
 * When the app exits, init kills what is left, prints its exit status, syncs
 * and reboots; QEMU runs with -no-reboot, so the VM ends.
 *
 * Configuration: /etc/fleet/machine.conf in the initramfs, NUL-separated
 * "key=value" records (repeated keys keep their order): nonce, hostname,
 * rootdev, rootfstype, rootflags, arg, env, uid, gid, groups, workdir,
 * kill_signal, kill_timeout_ms, addr, gw, mtu, probe (report and end at once),
 * halt ("reboot", the default, or "poweroff" for VMMs that restart a rebooting guest). Modules to load, in order:
 * /etc/fleet/modules (one path per line).
 *
 * Built with `gcc -static -Os` by providers/guestinit/build.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEMS 512
#define CONF_MAX (256 * 1024)

static char conf_buf[CONF_MAX];
static const char *args[MAX_ITEMS + 1];
static int nargs;
static const char *envs[MAX_ITEMS + 1];
static int nenvs;
static const char *addrs[64];
static int naddrs;
static const char *gws[8];
static int ngws;
static const char *nonce = "-";
static const char *hostname = "";
static const char *rootdev = "/dev/vda";
static const char *rootfstype = "ext4";
static const char *rootflags = "";
static const char *workdir = "/";
static const char *groups_csv = "";
static const char *mtu = "";
static uid_t app_uid;
static gid_t app_gid;
static int kill_signal = SIGTERM;
static long kill_timeout_ms = 5000;
static int console_fd = -1;
static int probe_only;
static int halt_cmd = RB_AUTOBOOT; /* QEMU -no-reboot and Firecracker end on reboot */

static long uptime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void say(const char *event, const char *fmt, ...) {
    char line[1024];
    int n = snprintf(line, sizeof line, "\nFLEET:%s:%s t=%ld ", nonce, event, uptime_ms());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - n - 2, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2) n = sizeof line - 2;
    line[n++] = '\n';
    int fd = console_fd >= 0 ? console_fd : 2;
    ssize_t w = write(fd, line, n);
    (void)w;
}

static void die(const char *what) {
    say("error", "msg=\"%s: %s\"", what, strerror(errno));
    sync();
    reboot(halt_cmd);
    _exit(1);
}

static void parse_conf(void) {
    int fd = open("/etc/fleet/machine.conf", O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open machine.conf");
    ssize_t n = read(fd, conf_buf, sizeof conf_buf - 1);
    close(fd);
    if (n <= 0) die("read machine.conf");
    conf_buf[n] = 0;
    char *p = conf_buf, *end = conf_buf + n;
    while (p < end) {
        char *rec = p;
        p += strlen(p) + 1;
        char *eq = strchr(rec, '=');
        if (!eq) continue;
        *eq = 0;
        const char *v = eq + 1;
        if (!strcmp(rec, "arg") && nargs < MAX_ITEMS) args[nargs++] = v;
        else if (!strcmp(rec, "env") && nenvs < MAX_ITEMS) envs[nenvs++] = v;
        else if (!strcmp(rec, "addr") && naddrs < 64) addrs[naddrs++] = v;
        else if (!strcmp(rec, "gw") && ngws < 8) gws[ngws++] = v;
        else if (!strcmp(rec, "nonce")) nonce = v;
        else if (!strcmp(rec, "hostname")) hostname = v;
        else if (!strcmp(rec, "rootdev")) rootdev = v;
        else if (!strcmp(rec, "rootfstype")) rootfstype = v;
        else if (!strcmp(rec, "rootflags")) rootflags = v;
        else if (!strcmp(rec, "workdir")) workdir = v;
        else if (!strcmp(rec, "uid")) app_uid = (uid_t)strtoul(v, NULL, 10);
        else if (!strcmp(rec, "gid")) app_gid = (gid_t)strtoul(v, NULL, 10);
        else if (!strcmp(rec, "groups")) groups_csv = v;
        else if (!strcmp(rec, "kill_signal")) kill_signal = atoi(v);
        else if (!strcmp(rec, "kill_timeout_ms")) kill_timeout_ms = atol(v);
        else if (!strcmp(rec, "mtu")) mtu = v;
        else if (!strcmp(rec, "probe")) probe_only = 1;
        else if (!strcmp(rec, "halt")) halt_cmd = strcmp(v, "poweroff") ? RB_AUTOBOOT : RB_POWER_OFF;
    }
    args[nargs] = NULL;
    envs[nenvs] = NULL;
}

/* Module parameters given on the kernel command line as "module.param=value". */
static void cmdline_params(const char *mod, char *out, size_t outlen) {
    char cmdline[4096];
    out[0] = 0;
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    if (n <= 0) return;
    cmdline[n] = 0;
    size_t mlen = strlen(mod);
    for (char *tok = strtok(cmdline, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (!strncmp(tok, mod, mlen) && tok[mlen] == '.') {
            if (strlen(out) + strlen(tok) + 2 >= outlen) break;
            if (out[0]) strcat(out, " ");
            strcat(out, tok + mlen + 1);
        }
    }
}

static void load_modules(void) {
    FILE *f = fopen("/etc/fleet/modules", "re");
    if (!f) return;
    char path[512];
    while (fgets(path, sizeof path, f)) {
        path[strcspn(path, "\n")] = 0;
        if (!path[0]) continue;
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        char mod[128];
        snprintf(mod, sizeof mod, "%.*s", (int)strcspn(base, "."), base);
        for (char *c = mod; *c; c++)
            if (*c == '-') *c = '_';
        char params[1024];
        cmdline_params(mod, params, sizeof params);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say("error", "msg=\"module %s: %s\"", path, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, params, 0) != 0 && errno != EEXIST)
            say("error", "msg=\"load %s: %s\"", mod, strerror(errno));
        close(fd);
    }
    fclose(f);
}

static int run_wait(const char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void setup_network(void) {
    const char *bb = "/bin/busybox";
    const char *lo[] = {bb, "ip", "link", "set", "lo", "up", NULL};
    run_wait(lo);
    if (!naddrs) return;
    for (int i = 0; i < 50 && access("/sys/class/net/eth0", F_OK) != 0; i++) usleep(20000);
    /* The host hands out unique addresses: skip duplicate address detection (saves ~1 s). */
    int dad = open("/proc/sys/net/ipv6/conf/eth0/accept_dad", O_WRONLY | O_CLOEXEC);
    if (dad >= 0) {
        ssize_t w = write(dad, "0\n", 2);
        (void)w;
        close(dad);
    }
    if (mtu[0]) {
        const char *m[] = {bb, "ip", "link", "set", "eth0", "mtu", mtu, NULL};
        run_wait(m);
    }
    for (int i = 0; i < naddrs; i++) {
        int v6 = strchr(addrs[i], ':') != NULL;
        const char *a4[] = {bb, "ip", "addr", "add", addrs[i], "dev", "eth0", NULL};
        const char *a6[] = {bb, "ip", "-6", "addr", "add", addrs[i], "dev", "eth0", NULL};
        if (run_wait(v6 ? a6 : a4) != 0) say("error", "msg=\"ip addr add %s failed\"", addrs[i]);
    }
    const char *up[] = {bb, "ip", "link", "set", "eth0", "up", NULL};
    run_wait(up);
    for (int i = 0; i < ngws; i++) {
        int v6 = strchr(gws[i], ':') != NULL;
        const char *r4[] = {bb, "ip", "route", "add", "default", "via", gws[i], "dev", "eth0", NULL};
        const char *r6[] = {bb, "ip", "-6", "route", "add", "default", "via", gws[i], "dev", "eth0", NULL};
        if (run_wait(v6 ? r6 : r4) != 0) say("error", "msg=\"default route via %s failed\"", gws[i]);
    }
    say("net", "addrs=%d", naddrs);
}

static void mount_in(const char *src, const char *dir, const char *type, unsigned long flags,
                     const char *data) {
    char path[256];
    snprintf(path, sizeof path, "/newroot%s", dir);
    struct stat st;
    if (lstat(path, &st) != 0 && mkdir(path, 0755) != 0) {
        say("error", "msg=\"cannot create %s: %s\"", dir, strerror(errno));
        return;
    }
    if (mount(src, path, type, flags, data) != 0)
        say("error", "msg=\"mount %s: %s\"", dir, strerror(errno));
}

static void mount_root(void) {
    for (int i = 0; i < 250 && access(rootdev, F_OK) != 0; i++) usleep(20000);
    mkdir("/newroot", 0755);
    unsigned long flags = strstr(rootflags, "ro") == rootflags ? MS_RDONLY : 0;
    if (mount(rootdev, "/newroot", rootfstype, flags, NULL) != 0) die("mount root filesystem");
    say("root", "dev=%s type=%s", rootdev, rootfstype);
}

static void switch_root(void) {
    const unsigned long nosuid = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    mount_in("proc", "/proc", "proc", nosuid, NULL);
    mount_in("sysfs", "/sys", "sysfs", nosuid, NULL);
    mount_in("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount_in("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
    mount_in("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_in("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mount_in("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    if (chdir("/newroot") != 0) die("chdir /newroot");
    if (mount(".", "/", NULL, MS_MOVE, NULL) != 0) die("move root");
    if (chroot(".") != 0) die("chroot");
    if (chdir("/") != 0) die("chdir /");
}

static void open_console(void) {
    console_fd = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (console_fd < 0) return;
    struct termios t;
    if (tcgetattr(console_fd, &t) == 0) {
        t.c_lflag &= ~(ECHO | ECHONL);
        t.c_lflag |= ICANON;
        t.c_iflag |= ICRNL;
        t.c_oflag |= OPOST | ONLCR;
        tcsetattr(console_fd, TCSANOW, &t);
    }
}

static const char *env_get(const char *key) {
    size_t k = strlen(key);
    for (int i = 0; i < nenvs; i++)
        if (!strncmp(envs[i], key, k) && envs[i][k] == '=') return envs[i] + k + 1;
    return NULL;
}

/* execve argv[0], searching the app's PATH as `docker run` does (not init's). */
static void exec_app(void) {
    const char *cmd = args[0];
    if (strchr(cmd, '/')) {
        execve(cmd, (char *const *)args, (char *const *)envs);
        dprintf(2, "fleet-init: exec %s: %s\n", cmd, strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    const char *path = env_get("PATH");
    int eacces = 0;
    if (path) {
        char buf[4096];
        const char *p = path;
        while (1) {
            size_t len = strcspn(p, ":");
            if (len > 0) {
                snprintf(buf, sizeof buf, "%.*s/%s", (int)len, p, cmd);
                execve(buf, (char *const *)args, (char *const *)envs);
                if (errno == EACCES) eacces = 1;
            }
            if (!p[len]) break;
            p += len + 1;
        }
    }
    dprintf(2, "fleet-init: %s: not found in PATH \"%s\"\n", cmd, path ? path : "");
    _exit(eacces ? 126 : 127);
}

static pid_t start_app(const sigset_t *oldmask) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid > 0) return pid;
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    setsid();
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    if (console_fd >= 0) {
        dup2(console_fd, 1);
        dup2(console_fd, 2);
    }
    gid_t groups[64];
    int ngroups = 0;
    for (const char *g = groups_csv; *g && ngroups < 64;) {
        groups[ngroups++] = (gid_t)strtoul(g, NULL, 10);
        g += strcspn(g, ",");
        if (*g) g++;
    }
    if (setgroups(ngroups, groups) != 0 || setgid(app_gid) != 0 || setuid(app_uid) != 0) {
        dprintf(2, "fleet-init: cannot switch to %u:%u: %s\n", app_uid, app_gid, strerror(errno));
        _exit(126);
    }
    if (chdir(workdir) != 0) {
        dprintf(2, "fleet-init: chdir %s: %s\n", workdir, strerror(errno));
        _exit(126);
    }
    exec_app();
    return -1;
}

static void mkdir_p(const char *dir) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    open_console();
    parse_conf();
    say("boot", "args=%d", nargs);
    load_modules();
    if (probe_only) { /* the host only wants to know that this VMM/accelerator reaches init */
        say("probe", "ok=1");
        reboot(halt_cmd);
        return 0;
    }
    mount_root();
    setup_network();
    switch_root();
    if (hostname[0]) sethostname(hostname, strlen(hostname));
    if (workdir[0] && strcmp(workdir, "/") != 0) {
        struct stat st;
        if (stat(workdir, &st) != 0) mkdir_p(workdir); /* docker creates a missing WorkingDir */
    }
    if (nargs == 0) {
        say("error", "msg=\"no command: the image has no Entrypoint or Cmd and none was given\"");
        say("exit", "code=127");
        sync();
        reboot(halt_cmd);
        return 1;
    }

    sigset_t mask, oldmask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGPWR);
    sigprocmask(SIG_BLOCK, &mask, &oldmask);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) die("signalfd");

    pid_t app = start_app(&oldmask);
    say("start", "pid=%d uid=%u gid=%u", app, app_uid, app_gid);

    int status = 0, done = 0;
    long deadline = -1;
    char line[256];
    size_t used = 0;
    while (!done) {
        struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = console_fd, .events = POLLIN}};
        int timeout = -1;
        if (deadline >= 0) {
            long left = deadline - uptime_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        int n = poll(fds, console_fd >= 0 ? 2 : 1, timeout);
        if (n < 0 && errno != EINTR) die("poll");
        if (deadline >= 0 && uptime_ms() >= deadline) {
            kill(app, SIGKILL);
            say("kill", "pid=%d after_ms=%ld", app, kill_timeout_ms);
            deadline = -1;
        }
        int stop_sig = 0;
        long stop_timeout = kill_timeout_ms;
        if (n > 0 && (fds[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    int st;
                    pid_t pid;
                    while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
                        if (pid == app) {
                            status = st;
                            done = 1;
                        }
                } else {
                    stop_sig = kill_signal; /* init itself told to stop: the App's signal */
                }
                break;
            }
        }
        if (n > 0 && console_fd >= 0 && (fds[1].revents & POLLIN)) {
            ssize_t r = read(console_fd, line + used, sizeof line - 1 - used);
            if (r > 0) {
                used += (size_t)r;
                line[used] = 0;
                char *nl;
                while ((nl = strchr(line, '\n')) != NULL) {
                    *nl = 0;
                    char *cmd = strstr(line, "FLEET-STOP");
                    if (cmd) {
                        int sig = 0;
                        long ms = -1;
                        sscanf(cmd, "FLEET-STOP %d %ld", &sig, &ms);
                        stop_sig = sig > 0 ? sig : kill_signal;
                        stop_timeout = ms >= 0 ? ms : kill_timeout_ms;
                    }
                    size_t rest = used - (size_t)(nl + 1 - line);
                    memmove(line, nl + 1, rest + 1);
                    used = rest;
                }
                if (used >= sizeof line - 1) used = 0;
            }
        }
        if (stop_sig && !done) {
            kill(app, stop_sig);
            say("stop", "pid=%d signal=%d timeout_ms=%ld", app, stop_sig, stop_timeout);
            if (deadline < 0) deadline = uptime_ms() + stop_timeout;
        }
    }
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    if (WIFEXITED(status))
        say("exit", "code=%d", WEXITSTATUS(status));
    else
        say("exit", "signal=%d", WTERMSIG(status));
    sync();
    mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
    reboot(halt_cmd);
    return 0;
}
