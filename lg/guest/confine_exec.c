/*
 * lg-confine-exec: confine this process as a step's profile says, then exec the step's command.
 *
 * The guest agent (lg/guest/confine.py) used to do this in a Python preexec function. That forces fork()
 * instead of vfork(), and under TCG the copy of the agent's page tables, the copy-on-write faults of Python
 * running in the child and the setup itself cost about 50 ms of every confined command. The agent now
 * spawns this helper with vfork and passes it what it worked out; the helper does the system calls, in
 * the order the Python code did (each needs privileges the next one takes away):
 *
 *   join the command's cgroup, name the AppArmor profile entered at exec, make the private mounts, drop
 *   the capability bounding set and the ambient set, load the seccomp filter (while still root, so no
 *   no_new_privs is needed to load it), take the step's gid and uid, set no_new_privs, exec.
 *
 * Any failure is reported on --status-fd as "<errno> <what>" and the helper exits 126 (127 when the
 * command is not found); a successful exec closes that descriptor (close-on-exec), which tells the agent
 * the command now runs confined. Options (all before "--"):
 *   --status-fd=N --cgroup-procs=PATH --apparmor-attr=PATH --apparmor-exec=TEXT --drop-caps=N,N,...
 *   --seccomp-fd=N (a BPF program, sock_filter records) --gid=N --uid=N --no-new-privs
 *   --tmpfs=PATH --read-only=PATH (repeatable; tmpfs mounts first, as the Python code did)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_PATHS 64
#define MAX_PROGRAM (4096 * sizeof(struct sock_filter))

static int status_fd = -1;

static void fail(int code, const char *what) {
    int saved = errno;
    char message[512];
    int length = snprintf(message, sizeof message, "%d %s: %s", saved, what, strerror(saved));
    if (status_fd >= 0 && length > 0) {
        ssize_t ignored = write(status_fd, message, (size_t)length);
        (void)ignored;
    }
    _exit(code);
}

static void usage(const char *what) {
    errno = EINVAL;
    fail(126, what);
}

static long number(const char *text, const char *option) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0) usage(option);
    return value;
}

static void write_file(const char *path, const char *text, const char *what) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail(126, what);
    size_t length = strlen(text);
    if (write(fd, text, length) != (ssize_t)length) fail(126, what);
    close(fd);
}

static void make_dirs(char *path) {
    /* mkdir -p, as root, before the command's mount namespace gets the tmpfs */
    for (char *slash = path + 1; *slash; slash++) {
        if (*slash != '/') continue;
        *slash = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) fail(126, "mkdir for a tmpfs mount");
        *slash = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) fail(126, "mkdir for a tmpfs mount");
}

static void private_mounts(char **tmpfs, int tmpfs_count, char **read_only, int read_only_count) {
    if (unshare(CLONE_NEWNS) != 0) fail(126, "unshare(CLONE_NEWNS)");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) fail(126, "mount /");
    for (int i = 0; i < tmpfs_count; i++) {
        make_dirs(tmpfs[i]);
        if (mount("tmpfs", tmpfs[i], "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0) fail(126, tmpfs[i]);
    }
    for (int i = 0; i < read_only_count; i++) {
        if (mount(read_only[i], read_only[i], NULL, MS_BIND | MS_REC, NULL) != 0) fail(126, read_only[i]);
        if (mount(NULL, read_only[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) fail(126, read_only[i]);
    }
}

static void drop_capabilities(char *list) {
    for (char *item = list ? strtok(list, ",") : NULL; item; item = strtok(NULL, ",")) {
        if (prctl(PR_CAPBSET_DROP, number(item, "--drop-caps"), 0, 0, 0) != 0) fail(126, "prctl(PR_CAPBSET_DROP)");
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) fail(126, "prctl(PR_CAP_AMBIENT)");
}

static void load_seccomp(int fd) {
    static unsigned char program[MAX_PROGRAM];
    size_t length = 0;
    for (;;) {
        ssize_t got = read(fd, program + length, sizeof program - length);
        if (got < 0) fail(126, "reading the seccomp program");
        if (got == 0) break;
        length += (size_t)got;
        if (length == sizeof program) usage("the seccomp program is too long");
    }
    close(fd);
    if (length == 0 || length % sizeof(struct sock_filter) != 0) usage("a malformed seccomp program");
    struct sock_fprog filter = {(unsigned short)(length / sizeof(struct sock_filter)), (struct sock_filter *)program};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter, 0, 0) != 0) fail(126, "prctl(PR_SET_SECCOMP)");
}

int main(int argc, char **argv) {
    const char *cgroup_procs = NULL, *apparmor_attr = NULL, *apparmor_exec = NULL;
    char *drop_caps = NULL;
    char *tmpfs[MAX_PATHS], *read_only[MAX_PATHS];
    int tmpfs_count = 0, read_only_count = 0, seccomp_fd = -1, no_new_privs = 0, i;
    long uid = -1, gid = -1;

    for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        char *option = argv[i], *value = strchr(option, '=');
        if (value) *value++ = '\0';
        if (strcmp(option, "--no-new-privs") == 0) no_new_privs = 1;
        else if (!value) usage(option);
        else if (strcmp(option, "--status-fd") == 0) status_fd = (int)number(value, option);
        else if (strcmp(option, "--cgroup-procs") == 0) cgroup_procs = value;
        else if (strcmp(option, "--apparmor-attr") == 0) apparmor_attr = value;
        else if (strcmp(option, "--apparmor-exec") == 0) apparmor_exec = value;
        else if (strcmp(option, "--drop-caps") == 0) drop_caps = value;
        else if (strcmp(option, "--seccomp-fd") == 0) seccomp_fd = (int)number(value, option);
        else if (strcmp(option, "--uid") == 0) uid = number(value, option);
        else if (strcmp(option, "--gid") == 0) gid = number(value, option);
        else if (strcmp(option, "--tmpfs") == 0 && tmpfs_count < MAX_PATHS) tmpfs[tmpfs_count++] = value;
        else if (strcmp(option, "--read-only") == 0 && read_only_count < MAX_PATHS) read_only[read_only_count++] = value;
        else usage(option);
    }
    if (i >= argc - 1) usage("no command after --");
    if (status_fd >= 0 && fcntl(status_fd, F_SETFD, FD_CLOEXEC) != 0) fail(126, "fcntl(status fd)");

    if (cgroup_procs) write_file(cgroup_procs, "0", "joining the command's cgroup");
    if (apparmor_attr && apparmor_exec) write_file(apparmor_attr, apparmor_exec, "naming the AppArmor profile");
    if (tmpfs_count || read_only_count) private_mounts(tmpfs, tmpfs_count, read_only, read_only_count);
    drop_capabilities(drop_caps);  /* the ambient set is cleared even when the profile keeps every capability */
    if (seccomp_fd >= 0) load_seccomp(seccomp_fd);
    if (gid >= 0) {
        if (setgroups(0, NULL) != 0) fail(126, "setgroups");
        if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) fail(126, "setresgid");
    }
    if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) fail(126, "setresuid");
    if (no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(126, "prctl(PR_SET_NO_NEW_PRIVS)");

    execvp(argv[i + 1], argv + i + 1);
    fail(errno == ENOENT ? 127 : 126, argv[i + 1]);
    return 126;
}
