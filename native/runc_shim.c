/*
 * runc_shim: the per-container supervisor of thingdoer (in the spirit of conmon).
 *
 * main() reads top to bottom as the whole lifecycle:
 *   parse flags -> fork (the spawner reaps the first process at once) -> setsid ->
 *   child subreaper -> write shim.pid -> runtime `run --detach` (stdio on pipes we own) ->
 *   report the pid (or the runtime's error text) on the sync fd ->
 *   pump stdout/stderr into a CRI-format log, rotating it -> reap the init ->
 *   runtime delete -> write the exit file atomically -> exit.
 *
 * The protocol (arguments, sync fd messages, files) is written down in native/README.md.
 * No Python in here: one of these runs per container, and its resident memory is the cost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 8192          /* one read of the container's output: one or more records */
#define ERROR_MAX 4096           /* how much of the runtime's error text is reported */
#define DRAIN_MS 200             /* after the init exits: wait this long for the last output */

static struct {
    const char *bundle, *log_path, *pid_file;
    long long log_max_size;
    int log_max_files, sync_fd;
    char **run, **delete;  /* runtime argvs, each NULL-terminated */
} opt = {.log_max_size = 10 * 1024 * 1024, .log_max_files = 5, .sync_fd = -1};

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("runc_shim: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static char *bundle_file(const char *name) {
    char *path;
    if (asprintf(&path, "%s/%s", opt.bundle, name) < 0) die("out of memory");
    return path;
}

/* Write `text` to `path` through a temporary file and rename(2): readers see all or nothing. */
static int write_atomic(const char *path, const char *text) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    int ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    close(fd);
    return ok ? rename(tmp, path) : -1;
}

/* ---- arguments -------------------------------------------------------------------------- */

static void usage(void) {
    die("usage: runc_shim --bundle DIR --log FILE --pid-file FILE [--log-max-size BYTES]\n"
        "       [--log-max-files N] [--sync-fd FD] -- RUN-ARGV -- DELETE-ARGV");
}

/* Split argv at lone "--" into the runtime command lines. */
static char **next_argv(char **argv, int *i, int argc) {
    char **out = &argv[*i];
    while (*i < argc && strcmp(argv[*i], "--") != 0) (*i)++;
    if (*i < argc) argv[(*i)++] = NULL;
    return out;
}

static void parse(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--bundle")) opt.bundle = v;
        else if (!strcmp(k, "--log")) opt.log_path = v;
        else if (!strcmp(k, "--pid-file")) opt.pid_file = v;
        else if (!strcmp(k, "--log-max-size")) opt.log_max_size = atoll(v);
        else if (!strcmp(k, "--log-max-files")) opt.log_max_files = atoi(v);
        else if (!strcmp(k, "--sync-fd")) opt.sync_fd = atoi(v);
        else usage();
    }
    if (i >= argc || !opt.bundle || !opt.log_path || !opt.pid_file) usage();
    if (opt.log_max_size < 1 || opt.log_max_files < 1) die("log limits must be positive");
    i++;
    opt.run = next_argv(argv, &i, argc);
    opt.delete = next_argv(argv, &i, argc);
    if (!opt.run[0] || !opt.delete[0]) usage();
}

/* ---- the CRI log ------------------------------------------------------------------------ */

static int log_fd = -1;
static long long log_size;

static void log_open(void) {
    log_fd = open(opt.log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (log_fd < 0) die("opening %s: %s", opt.log_path, strerror(errno));
    struct stat st;
    log_size = fstat(log_fd, &st) == 0 ? st.st_size : 0;
}

/* container.log -> .1 -> .2 ...; the oldest beyond max_files (the live file counts) goes.
 * Renames, never copies: a reader holding the old file keeps reading it to its end. */
static void log_rotate(void) {
    char from[PATH_MAX], to[PATH_MAX];
    close(log_fd);
    if (opt.log_max_files == 1) {
        unlink(opt.log_path);
    } else {
        snprintf(to, sizeof to, "%s.%d", opt.log_path, opt.log_max_files - 1);
        unlink(to);
        for (int n = opt.log_max_files - 2; n >= 1; n--) {
            snprintf(from, sizeof from, "%s.%d", opt.log_path, n);
            snprintf(to, sizeof to, "%s.%d", opt.log_path, n + 1);
            rename(from, to);
        }
        snprintf(to, sizeof to, "%s.1", opt.log_path);
        rename(opt.log_path, to);
    }
    log_open();
}

/* One record: "<RFC3339Nano> <stream> <F|P> <text>\n". */
static void log_record(const char *stream, char tag, const char *text, size_t len) {
    struct timespec ts;
    struct tm tm;
    char head[64];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(head + n, sizeof head - n, ".%09ldZ %s %c ", ts.tv_nsec, stream, tag);
    long long size = (long long)(n + len + 1);
    if (log_size > 0 && log_size + size > opt.log_max_size) log_rotate();
    struct iovec iov[3] = {{head, n}, {(void *)text, len}, {"\n", 1}};
    /* A failed log write (disk full) must not stop the container: the record is dropped. */
    if (writev(log_fd, iov, 3) > 0) log_size += size;
}

/* Complete lines become F records; a trailing piece without its newline a P record (as
 * conmon: never hold output back waiting for the rest of a line). */
static void log_chunk(const char *stream, const char *buf, size_t len) {
    while (len > 0) {
        const char *nl = memchr(buf, '\n', len);
        size_t line = nl ? (size_t)(nl - buf) : len;
        log_record(stream, nl ? 'F' : 'P', buf, line);
        if (!nl) break;
        buf += line + 1;
        len -= line + 1;
    }
}

/* ---- the runtime ------------------------------------------------------------------------ */

static sigset_t chld_mask;

/* fork+exec argv with stdio on the given fds; returns its wait status. */
static int run_wait(char **argv, int in, int out, int err) {
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        sigprocmask(SIG_UNBLOCK, &chld_mask, NULL);  /* the mask survives exec */
        signal(SIGPIPE, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);  /* a runtime call never outlives its shim */
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(127);
        execvp(argv[0], argv);
        dprintf(2, "runc_shim: executing %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid: %s", strerror(errno));
    return status;
}

static int exit_code(int status) {
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* Read what a pipe holds now (it is non-blocking) into buf; returns the length. */
static size_t read_available(int fd, char *buf, size_t cap) {
    size_t len = 0;
    ssize_t n;
    while (len < cap && (n = read(fd, buf + len, cap - len)) > 0) len += n;
    return len;
}

static void sync_send(const char *json) {
    if (opt.sync_fd < 0) return;
    /* EPIPE when the agent is gone: SIGPIPE is ignored and the shim carries on alone. */
    if (write(opt.sync_fd, json, strlen(json)) < 0) {}
    close(opt.sync_fd);
    opt.sync_fd = -1;
}

/* The runtime failed: its own words go to the log, to the agent, and the shim ends. */
static void fail(const char *what, int status, int out_r, int err_r, int devnull) {
    static char text[ERROR_MAX];
    size_t len = read_available(err_r, text, sizeof text - 1);
    len += read_available(out_r, text + len, sizeof text - 1 - len);
    if (len && text[len - 1] != '\n') text[len++] = '\n';  /* whole lines: F records */
    log_chunk("stderr", text, len);
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' ')) len--;
    text[len] = 0;
    if (!len) {
        len = snprintf(text, sizeof text, "%s exited with status %d", what, exit_code(status));
        log_record("stderr", 'F', text, len);
    }
    run_wait(opt.delete, devnull, devnull, devnull);  /* undo a half-made container */

    static char json[ERROR_MAX * 6 + 64];
    size_t j = snprintf(json, sizeof json, "{\"pid\": -1, \"error\": \"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = text[i];
        if (c == '"' || c == '\\') j += sprintf(json + j, "\\%c", c);
        else if (c < 0x20) j += sprintf(json + j, "\\u%04x", c);
        else json[j++] = c;
    }
    snprintf(json + j, sizeof json - j, "\"}\n");

    char code[32], *exit_file = bundle_file("exit");
    snprintf(code, sizeof code, "%d\n", exit_code(status) ? exit_code(status) : 1);
    write_atomic(exit_file, code);
    sync_send(json);
    exit(0);
}

static pid_t read_pid_file(void) {
    char buf[32] = {0};
    int fd = open(opt.pid_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? (pid_t)atol(buf) : -1;
}

/* Field 22 of /proc/self/stat: with the pid, it names this process for good (pids recycle). */
static unsigned long long start_time(void) {
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) die("reading /proc/self/stat: %s", strerror(errno));
    buf[n] = 0;
    char *p = strrchr(buf, ')');  /* the command name may hold spaces */
    for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* ---- main: the lifecycle ---------------------------------------------------------------- */

int main(int argc, char **argv) {
    parse(argc, argv);
    /* The sync fd is for the agent alone: no runtime call or container inherits it. */
    if (opt.sync_fd >= 0) fcntl(opt.sync_fd, F_SETFD, FD_CLOEXEC);
    /* A reader gone (the agent, on the sync fd) must not kill the shim. */
    signal(SIGPIPE, SIG_IGN);

    /* The spawner waits for this first process, which leaves at once: the shim proper is
     * nobody's child but init's (or a subreaper's), and the agent never has to reap it. */
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid > 0) _exit(0);
    if (setsid() < 0) die("setsid: %s", strerror(errno));  /* no terminal, no process group */
    /* The runtime's `run --detach` exits leaving the container's init behind: as subreaper, the
     * init becomes our child, so we can wait for it and learn its status. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));

    sigemptyset(&chld_mask);
    sigaddset(&chld_mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld_mask, NULL);
    int sfd = signalfd(-1, &chld_mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) die("signalfd: %s", strerror(errno));

    char text[64], *shim_pid = bundle_file("shim.pid");
    snprintf(text, sizeof text, "%d %llu\n", getpid(), start_time());
    if (write_atomic(shim_pid, text) < 0) die("writing %s: %s", shim_pid, strerror(errno));
    log_open();

    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) die("pipe: %s", strerror(errno));
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) die("/dev/null: %s", strerror(errno));
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);

    /* `run --detach` (create and start in one runtime call: a second call, `start`, costs a
     * whole runtime process start, ~10-20 ms for runc): the container's stdio are the pipes'
     * write ends. When it fails, the runtime's errors on that same stderr are its only
     * content (the container never ran). The pipes hold 64 KiB until the pump below starts. */
    int status = run_wait(opt.run, devnull, out[1], err[1]);
    if (status != 0) fail("the runtime", status, out[0], err[0], devnull);
    close(out[1]);  /* from now on only the container holds the write ends: EOF = all gone */
    close(err[1]);

    pid_t init = read_pid_file();
    snprintf(text, sizeof text, "{\"pid\": %d}\n", (int)init);
    sync_send(text);

    struct pollfd fds[3] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}, {sfd, POLLIN, 0}};
    const char *streams[2] = {"stdout", "stderr"};
    char *buf = malloc(READ_CHUNK);
    int init_status = -1, open_pipes = 2;
    while (open_pipes > 0) {
        /* Once the init is gone, its pid namespace is gone too and the pipes close at once;
         * the timeout only guards against a process outside it still holding them. */
        int ready = poll(fds, 3, init_status < 0 ? -1 : DRAIN_MS);
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) break;
        for (int s = 0; s < 2; s++) {
            if (!fds[s].revents) continue;
            ssize_t n = read(fds[s].fd, buf, READ_CHUNK);
            if (n > 0) {
                log_chunk(streams[s], buf, n);
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                fds[s].fd = -1;  /* poll ignores negative fds */
                open_pipes--;
            }
        }
        if (fds[2].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
        }
        /* Reap every child: the init, and whatever else was reparented to us. */
        int st;
        pid_t child;
        while ((child = waitpid(-1, &st, WNOHANG)) > 0)
            if (child == init) init_status = st;
        if (init < 0 && init_status < 0 && open_pipes == 0) break;
    }
    if (init_status < 0) {  /* pipes closed first (or no pid file): wait for the init itself */
        if (init > 0)
            while (waitpid(init, &init_status, 0) < 0 && errno == EINTR) {}
        if (init_status < 0) init_status = 255 << 8;
    }

    run_wait(opt.delete, devnull, devnull, devnull);
    /* "<code>" or, for a death by signal N, "<128+N> <N>"; renamed into place, so it is
     * complete whenever it exists. Written last: when it exists, the shim's work is done. */
    if (WIFSIGNALED(init_status))
        snprintf(text, sizeof text, "%d %d\n", 128 + WTERMSIG(init_status), WTERMSIG(init_status));
    else
        snprintf(text, sizeof text, "%d\n", WEXITSTATUS(init_status));
    char *exit_file = bundle_file("exit");
    if (write_atomic(exit_file, text) < 0) die("writing %s: %s", exit_file, strerror(errno));
    return 0;
}
