// tests/chaos/fault_shim.c — an LD_PRELOAD library for the reliability tests (never shipped): it watches
// the files under one directory (TROVE_SHIM_DIR, e.g. a KV store: its segments and RocksDB's files)
// and can
//
//  * record power-loss undo information (TROVE_SHIM_UNDO=LOG): before every write to a watched file
//    it appends to LOG the bytes the write will overwrite and the file's size; every fsync/fdatasync
//    of a watched file appends a sync mark. After the process is killed, undo_log.h applies the log
//    backwards, so every watched file holds exactly what its last fsync covered: each write not
//    covered by an fsync is discarded, as a power cut would lose it. (Metadata — creating, renaming,
//    unlinking files — is kept as it happened: the store and RocksDB fsync their directories, and the
//    model here is the page cache's data being lost.) The log is written with plain write(2) outside
//    the watched directory, so SIGKILL does not lose it.
//  * inject faults (TROVE_SHIM_CTL=FILE): FILE holds one line "OP ERRNO [PATH-SUBSTRING]", OP one of
//    write, read, sync, open (open for writing or creating), ERRNO one of ENOSPC, EIO, EROFS, or is
//    empty for no fault. It is re-read whenever its modification time changes, so a test toggles
//    faults in a running process by rewriting it. With a control file, O_DIRECT opens of watched
//    files fail with EINVAL (as on tmpfs), so reads go through pread, where the faults apply.
//
// Thread-safe (one mutex around the tables and the log). Only libc's entry points are wrapped
// (open*, creat, close, write, pwrite*, writev, read, pread*, fsync, fdatasync, ftruncate, rename):
// io_uring and mmap bypass it, which the store uses only for reads.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char* watched[MAX_FD];  // path of each watched fd, or NULL
static const char* dir;
static size_t dir_len;
static int undo_fd = -1;
static const char* ctl_path;
static struct timespec ctl_mtime;
static char fault_op[16], fault_sub[256];
static int fault_errno;

static int (*real_open)(const char*, int, ...);
static int (*real_openat)(int, const char*, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void*, size_t);
static ssize_t (*real_pwrite)(int, const void*, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec*, int);
static ssize_t (*real_read)(int, void*, size_t);
static ssize_t (*real_pread)(int, void*, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_rename)(const char*, const char*);

__attribute__((constructor)) static void init(void) {
  real_open = dlsym(RTLD_NEXT, "open");
  real_openat = dlsym(RTLD_NEXT, "openat");
  real_close = dlsym(RTLD_NEXT, "close");
  real_write = dlsym(RTLD_NEXT, "write");
  real_pwrite = dlsym(RTLD_NEXT, "pwrite");
  real_writev = dlsym(RTLD_NEXT, "writev");
  real_read = dlsym(RTLD_NEXT, "read");
  real_pread = dlsym(RTLD_NEXT, "pread");
  real_fsync = dlsym(RTLD_NEXT, "fsync");
  real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
  real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
  real_rename = dlsym(RTLD_NEXT, "rename");
  dir = getenv("TROVE_SHIM_DIR");
  dir_len = dir ? strlen(dir) : 0;
  const char* undo = getenv("TROVE_SHIM_UNDO");
  if (undo && *undo) undo_fd = real_open(undo, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  ctl_path = getenv("TROVE_SHIM_CTL");
}

// Another library's constructor may open a file before ours has run.
static void ensure(void) {
  if (!real_close) init();
}

static int under_dir(const char* path) {
  return dir_len && path && strncmp(path, dir, dir_len) == 0 && (path[dir_len] == '/' || path[dir_len] == 0);
}

// The control file, re-read when it changes. Called with mu held.
static void refresh_ctl(void) {
  if (!ctl_path) return;
  struct stat st;
  if (stat(ctl_path, &st) != 0) {
    fault_op[0] = 0;
    return;
  }
  if (st.st_mtim.tv_sec == ctl_mtime.tv_sec && st.st_mtim.tv_nsec == ctl_mtime.tv_nsec) return;
  ctl_mtime = st.st_mtim;
  fault_op[0] = fault_sub[0] = 0;
  fault_errno = 0;
  int fd = real_open(ctl_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[512] = {0};
  ssize_t n = real_read(fd, buf, sizeof buf - 1);
  real_close(fd);
  if (n <= 0) return;
  char err[32] = {0};
  if (sscanf(buf, "%15s %31s %255s", fault_op, err, fault_sub) < 2) {
    fault_op[0] = 0;
    return;
  }
  fault_errno = strcmp(err, "ENOSPC") == 0 ? ENOSPC : strcmp(err, "EROFS") == 0 ? EROFS : EIO;
}

// Whether `op` on `path` fails now (errno is set when it does).
static int faulty(const char* op, const char* path) {
  if (!ctl_path || !path) return 0;
  pthread_mutex_lock(&mu);
  refresh_ctl();
  int hit = fault_op[0] && strcmp(fault_op, op) == 0 && (!fault_sub[0] || strstr(path, fault_sub));
  int e = fault_errno;
  pthread_mutex_unlock(&mu);
  if (hit) errno = e;
  return hit;
}

static const char* path_of(int fd) { return fd >= 0 && fd < MAX_FD ? watched[fd] : NULL; }

// Log record: 'W' path\0 offset(8) old_size(8) n(8) old bytes[n]; 'S' path\0; 'R' from\0 to\0.
static void log_bytes(const void* p, size_t n) {
  const char* c = p;
  while (n > 0) {
    ssize_t w = real_write(undo_fd, c, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      abort();  // a lost undo record would make the power-loss model lie
    }
    c += w;
    n -= (size_t)w;
  }
}

// Before writing [off, off+len) of a watched file: log what it overwrites. Called with mu held.
static void log_write(int fd, const char* path, off_t off, size_t len) {
  struct stat st;
  if (fstat(fd, &st) != 0) return;
  uint64_t old_size = (uint64_t)st.st_size, o = (uint64_t)off, n = 0;
  char* old = NULL;
  if (o < old_size) {
    n = old_size - o < len ? old_size - o : len;
    old = malloc(n ? n : 1);
    int rfd = real_open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = rfd >= 0 ? real_pread(rfd, old, n, off) : -1;
    if (rfd >= 0) real_close(rfd);
    if (got != (ssize_t)n) abort();
  }
  log_bytes("W", 1);
  log_bytes(path, strlen(path) + 1);
  log_bytes(&o, 8);
  log_bytes(&old_size, 8);
  log_bytes(&n, 8);
  if (n) log_bytes(old, n);
  free(old);
}

static void track(int fd, const char* path) {
  if (fd < 0 || fd >= MAX_FD || !under_dir(path)) return;
  pthread_mutex_lock(&mu);
  free(watched[fd]);
  watched[fd] = strdup(path);
  pthread_mutex_unlock(&mu);
}

static char* resolve(int dirfd, const char* path, char* buf, size_t n) {
  if (!path) return NULL;
  if (path[0] == '/' || dirfd == AT_FDCWD) {
    if (path[0] == '/') return (char*)path;
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return (char*)path;
    snprintf(buf, n, "%s/%s", cwd, path);
    return buf;
  }
  const char* d = path_of(dirfd);
  if (!d) return (char*)path;
  snprintf(buf, n, "%s/%s", d, path);
  return buf;
}

static int do_open(int dirfd, const char* path, int flags, mode_t mode) {
  ensure();
  char buf[4096];
  const char* full = resolve(dirfd, path, buf, sizeof buf);
  if (under_dir(full)) {
    if (ctl_path && (flags & O_DIRECT)) {
      errno = EINVAL;
      return -1;
    }
    if ((flags & (O_WRONLY | O_RDWR | O_CREAT)) && faulty("open", full)) return -1;
    if ((flags & O_TRUNC) && undo_fd >= 0) {
      int rfd = real_open(full, O_RDONLY | O_CLOEXEC);
      if (rfd >= 0) {  // truncating an existing file: log its whole content as overwritten
        pthread_mutex_lock(&mu);
        struct stat st;
        if (fstat(rfd, &st) == 0 && st.st_size > 0) log_write(rfd, full, 0, (size_t)st.st_size);
        pthread_mutex_unlock(&mu);
        real_close(rfd);
      }
    }
  }
  int fd = dirfd == AT_FDCWD ? real_open(path, flags, mode) : real_openat(dirfd, path, flags, mode);
  track(fd, full);
  return fd;
}

int open(const char* path, int flags, ...) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  return do_open(AT_FDCWD, path, flags, mode);
}
int open64(const char* path, int flags, ...) __attribute__((alias("open")));
int __open_2(const char* path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int __open64_2(const char* path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int openat(int dirfd, const char* path, int flags, ...) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  return do_open(dirfd, path, flags, mode);
}
int openat64(int dirfd, const char* path, int flags, ...) __attribute__((alias("openat")));
int creat(const char* path, mode_t mode) { return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64(const char* path, mode_t mode) __attribute__((alias("creat")));

int close(int fd) {
  ensure();
  if (fd >= 0 && fd < MAX_FD && watched[fd]) {
    pthread_mutex_lock(&mu);
    free(watched[fd]);
    watched[fd] = NULL;
    pthread_mutex_unlock(&mu);
  }
  return real_close(fd);
}

static ssize_t watched_write(int fd, const char* path, off_t off, size_t len) {
  if (faulty("write", path)) return -1;
  if (undo_fd >= 0) {
    pthread_mutex_lock(&mu);
    log_write(fd, path, off, len);
    pthread_mutex_unlock(&mu);
  }
  return 0;
}

static off_t write_offset(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0 && (fl & O_APPEND)) {
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_size : 0;
  }
  return lseek(fd, 0, SEEK_CUR);
}

ssize_t write(int fd, const void* buf, size_t n) {
  ensure();
  const char* p = path_of(fd);
  if (p && watched_write(fd, p, write_offset(fd), n) < 0) return -1;
  return real_write(fd, buf, n);
}
ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  ensure();
  const char* p = path_of(fd);
  if (p && watched_write(fd, p, off, n) < 0) return -1;
  return real_pwrite(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) __attribute__((alias("pwrite")));
ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  ensure();
  const char* p = path_of(fd);
  if (p) {
    size_t n = 0;
    for (int i = 0; i < cnt; ++i) n += iov[i].iov_len;
    if (watched_write(fd, p, write_offset(fd), n) < 0) return -1;
  }
  return real_writev(fd, iov, cnt);
}

ssize_t read(int fd, void* buf, size_t n) {
  ensure();
  const char* p = path_of(fd);
  if (p && faulty("read", p)) return -1;
  return real_read(fd, buf, n);
}
ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  ensure();
  const char* p = path_of(fd);
  if (p && faulty("read", p)) return -1;
  return real_pread(fd, buf, n, off);
}
ssize_t pread64(int fd, void* buf, size_t n, off_t off) __attribute__((alias("pread")));

static int sync_mark(int fd) {
  const char* p = path_of(fd);
  if (!p) return 0;
  if (faulty("sync", p)) return -1;
  return 1;
}
static void log_sync(int fd) {
  const char* p = path_of(fd);
  if (!p || undo_fd < 0) return;
  pthread_mutex_lock(&mu);
  log_bytes("S", 1);
  log_bytes(p, strlen(p) + 1);
  pthread_mutex_unlock(&mu);
}
int fsync(int fd) {
  ensure();
  int m = sync_mark(fd);
  if (m < 0) return -1;
  int r = real_fsync(fd);
  if (r == 0 && m) log_sync(fd);
  return r;
}
int fdatasync(int fd) {
  ensure();
  int m = sync_mark(fd);
  if (m < 0) return -1;
  int r = real_fdatasync(fd);
  if (r == 0 && m) log_sync(fd);
  return r;
}

int ftruncate(int fd, off_t len) {
  ensure();
  const char* p = path_of(fd);
  if (p) {
    if (faulty("write", p)) return -1;
    struct stat st;
    if (undo_fd >= 0 && fstat(fd, &st) == 0 && st.st_size > len) {
      pthread_mutex_lock(&mu);
      log_write(fd, p, len, (size_t)(st.st_size - len));  // the cut-off bytes come back on undo
      pthread_mutex_unlock(&mu);
    }
  }
  return real_ftruncate(fd, len);
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int rename(const char* from, const char* to) {
  ensure();
  char b1[4096], b2[4096];
  const char* f = resolve(AT_FDCWD, from, b1, sizeof b1);
  const char* t = resolve(AT_FDCWD, to, b2, sizeof b2);
  int r = real_rename(from, to);
  if (r == 0 && undo_fd >= 0 && (under_dir(f) || under_dir(t))) {
    pthread_mutex_lock(&mu);
    log_bytes("R", 1);
    log_bytes(f, strlen(f) + 1);
    log_bytes(t, strlen(t) + 1);
    pthread_mutex_unlock(&mu);
  }
  return r;
}
