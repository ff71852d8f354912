/*
 * lg-tree: put a workspace tar stream into a directory, and take manifests of a tree.
 *
 * The guest agent did a put in Python (lg/guest/tarsafe.py Extractor, then lg/guest/manifest.py take). Under
 * TCG each file cost that Python about 4-5 ms; the same system calls made from C cost about 0.12 ms. The
 * Python code stays the reference for what is done (tests/guest/test_tree_tool.py compares the two); this
 * helper only does it faster:
 *
 *   lg-tree put DEST [--owner=UID:GID]  < tar stream         extract, then print DEST's manifest
 *   lg-tree scan ROOT                   < previous records   print ROOT's manifest
 *   lg-tree serve                                            run commands sent on stdin (the agent's way)
 *
 * The agent uses put, through serve (see the end of this file); scan is the walk put ends with, on its own.
 *
 * A manifest is one record per entry under the root (never the root itself), in no particular order, each
 * of 9 fields ended by a NUL byte:
 *
 *   kind path mode ino size mtime_ns ctime_ns sha256 target
 *
 * kind is file, symlink, dir or other (from lstat); mode is st_mode & 07777; sha256 is the content of a
 * file or the target of a symlink (empty otherwise); target is a symlink's target. scan reads previous
 * records in the same format and reuses a file's sha256 when (ino, size, mtime_ns, ctime_ns) are those of
 * the file at the same path there (ctime cannot be set from user space, so a rewritten file always shows
 * a new one); put uses the files it has just written as the previous records, so nothing is read back.
 * stdout gets the whole manifest at the end, or nothing when anything failed.
 *
 * The walk may meet a tree that untrusted code is changing. It never follows a symlink: directories come
 * off an explicit stack (no recursion as deep as the tree, one directory open at a time) and are opened by
 * their path beneath the root with openat2 (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), files with O_NOFOLLOW
 * and O_NONBLOCK from their directory and described by the fstat of what was read. As in take, an entry
 * that vanished or may not be looked at is skipped, and so is a directory that vanished or is no longer
 * one; an entry that changed kind while looked at is looked at again.
 *
 * put keeps every rule of the Extractor, although its only sender is lg itself: member names relative
 * without "..", every parent walked with O_NOFOLLOW from DEST, symlinks that stay inside when read
 * lexically, only files, directories and symlinks (not even hard links: lg's sender never makes them),
 * setuid/setgid/sticky dropped, directory modes applied last. It prints "files=N bytes=M" on stderr.
 *
 * Exit status: 0 done, 1 an unsafe member refused, 2 usage (or malformed previous records), 3 not a valid
 * tar stream, 4 an I/O or system failure; a failure is one "lg-tree: ..." line on stderr. stdin is read to
 * its end whatever happens, so the agent writing the stream never blocks or gets EPIPE.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { DONE = 0, UNSAFE = 1, USAGE = 2, BAD_ARCHIVE = 3, FAILED = 4 };

#define CHUNK (256 * 1024)
#define BLOCK 512
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define MAX_HEADER_DATA (1 << 20) /* PAX headers and GNU long names carry names, not content */
#define MAX_BENEATH 3840          /* path bytes given to one openat2 (PATH_MAX is 4096, a name at most 255) */
#define MAX_LINK 8192

/* --- failures ------------------------------------------------------------------------------------- */

static unsigned char input_data[CHUNK];
static struct {
    size_t start, end; /* the unread bytes of input_data */
    int eof;
} input;

static void drain(void) {
    input.start = input.end;
    while (!input.eof) {
        ssize_t got = read(STDIN_FILENO, input_data, sizeof input_data);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) input.eof = 1; /* a read error ends the draining too: nothing more can be read */
    }
}

__attribute__((noreturn, format(printf, 2, 3))) static void die(int code, const char *format, ...) {
    char message[8192];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(message, sizeof message, format, arguments);
    va_end(arguments);
    fprintf(stderr, "lg-tree: %s\n", message);
    drain(); /* whoever writes our stdin must never block on it, or get EPIPE from it */
    exit(code);
}

static void *grow(void *pointer, size_t size) {
    void *bigger = realloc(pointer, size ? size : 1);
    if (!bigger) die(FAILED, "out of memory");
    return bigger;
}

static char *copy(const void *bytes, size_t length) {
    char *text = grow(NULL, length + 1);
    if (length) memcpy(text, bytes, length);
    text[length] = '\0';
    return text;
}

struct buffer {
    char *data;
    size_t length, capacity;
};

static void append(struct buffer *buffer, const void *bytes, size_t length) {
    if (buffer->length + length + 1 > buffer->capacity) {
        size_t capacity = buffer->capacity ? buffer->capacity : 1 << 16;
        while (capacity < buffer->length + length + 1) capacity *= 2;
        buffer->data = grow(buffer->data, capacity);
        buffer->capacity = capacity;
    }
    if (length) memcpy(buffer->data + buffer->length, bytes, length);
    buffer->length += length;
    buffer->data[buffer->length] = '\0'; /* so a path being built is always a C string */
}

static void append_field(struct buffer *buffer, const void *bytes, size_t length) {
    append(buffer, bytes, length);
    append(buffer, "", 1);
}

static int write_all(int fd, const char *data, size_t length) {
    while (length) {
        ssize_t done = write(fd, data, length);
        if (done < 0 && errno == EINTR) continue;
        if (done < 0) return -1;
        data += done;
        length -= (size_t)done;
    }
    return 0;
}

/* --- SHA-256 (FIPS 180-4) ---------------------------------------------------------------------------- */

struct sha256 {
    uint32_t state[8];
    uint64_t bytes;
    unsigned char pending[64];
    size_t used;
};

static const uint32_t ROUND_CONSTANTS[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
/* One round, with the working variables renamed instead of shifted (eight rounds bring them back). */
#define ROUND(a, b, c, d, e, f, g, h, i)                                                                     \
    do {                                                                                                   \
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + (g ^ (e & (f ^ g))) +                   \
                      ROUND_CONSTANTS[i] + w[i];                                                           \
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) | (c & (a | b)));               \
        d += t1;                                                                                           \
        h = t1 + t2;                                                                                       \
    } while (0)

static void sha256_blocks(uint32_t state[8], const unsigned char *data, size_t blocks) {
    for (; blocks; blocks--, data += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)data[4 * i] << 24 | (uint32_t)data[4 * i + 1] << 16 | (uint32_t)data[4 * i + 2] << 8 |
                   (uint32_t)data[4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int i = 0; i < 64; i += 8) {
            ROUND(a, b, c, d, e, f, g, h, i);
            ROUND(h, a, b, c, d, e, f, g, i + 1);
            ROUND(g, h, a, b, c, d, e, f, i + 2);
            ROUND(f, g, h, a, b, c, d, e, i + 3);
            ROUND(e, f, g, h, a, b, c, d, i + 4);
            ROUND(d, e, f, g, h, a, b, c, i + 5);
            ROUND(c, d, e, f, g, h, a, b, i + 6);
            ROUND(b, c, d, e, f, g, h, a, i + 7);
        }
        state[0] += a, state[1] += b, state[2] += c, state[3] += d;
        state[4] += e, state[5] += f, state[6] += g, state[7] += h;
    }
}

static void sha256_init(struct sha256 *hash) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(hash->state, initial, sizeof initial);
    hash->bytes = 0;
    hash->used = 0;
}

static void sha256_update(struct sha256 *hash, const void *data, size_t length) {
    const unsigned char *bytes = data;
    hash->bytes += length;
    if (hash->used) {
        size_t take = 64 - hash->used < length ? 64 - hash->used : length;
        memcpy(hash->pending + hash->used, bytes, take);
        hash->used += take, bytes += take, length -= take;
        if (hash->used < 64) return;
        sha256_blocks(hash->state, hash->pending, 1);
        hash->used = 0;
    }
    sha256_blocks(hash->state, bytes, length / 64);
    bytes += length / 64 * 64, length %= 64;
    if (length) memcpy(hash->pending, bytes, length);
    hash->used = length;
}

static void sha256_hex(struct sha256 *hash, char hex[65]) {
    static const unsigned char padding[64] = {0x80};
    unsigned char length[8];
    uint64_t bits = hash->bytes * 8;
    for (int i = 0; i < 8; i++) length[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(hash, padding, hash->used < 56 ? 56 - hash->used : 120 - hash->used);
    sha256_update(hash, length, sizeof length);
    for (int i = 0; i < 32; i++) {
        unsigned value = (unsigned)(hash->state[i / 4] >> (24 - 8 * (i % 4))) & 0xff;
        hex[2 * i] = "0123456789abcdef"[value >> 4];
        hex[2 * i + 1] = "0123456789abcdef"[value & 15];
    }
    hex[64] = '\0';
}

/* --- previous records ------------------------------------------------------------------------------ */

struct known {
    char *path;
    char *key; /* "ino:size:mtime_ns:ctime_ns", compared as text so no value can overflow anything */
    char sha256[65];
    size_t order; /* a path given twice: the later one counts, as in a dict */
};

struct table {
    struct known *items;
    size_t count, capacity;
};

static void remember(struct table *table, const char *path, const char *key, const char *sha256) {
    if (table->count == table->capacity) {
        table->capacity = table->capacity ? table->capacity * 2 : 1024;
        table->items = grow(table->items, table->capacity * sizeof *table->items);
    }
    struct known *item = &table->items[table->count];
    item->path = copy(path, strlen(path));
    item->key = copy(key, strlen(key));
    memcpy(item->sha256, sha256, 65);
    item->order = table->count++;
}

static int by_path(const void *left, const void *right) {
    const struct known *a = left, *b = right;
    int order = strcmp(a->path, b->path);
    if (order) return order;
    return a->order < b->order ? -1 : a->order > b->order;
}

static void sort_table(struct table *table) {
    if (table->count) qsort(table->items, table->count, sizeof *table->items, by_path);
}

static const struct known *find(const struct table *table, const char *path) {
    size_t low = 0, high = table->count; /* -> the first item after every item for `path` */
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (strcmp(table->items[middle].path, path) <= 0) low = middle + 1;
        else high = middle;
    }
    return low && strcmp(table->items[low - 1].path, path) == 0 ? &table->items[low - 1] : NULL;
}

static char *read_all_input(size_t *length) {
    struct buffer all = {0};
    append(&all, "", 0);
    for (;;) {
        ssize_t got = read(STDIN_FILENO, input_data, sizeof input_data);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) die(FAILED, "reading the previous records: %s", strerror(errno));
        if (got == 0) break;
        append(&all, input_data, (size_t)got);
    }
    *length = all.length;
    return all.data;
}

static int is_hex_digest(const char *text) {
    for (int i = 0; i < 64; i++)
        if (!((text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'f'))) return 0;
    return text[64] == '\0';
}

static void load_previous(struct table *table) {
    size_t length;
    char *data = read_all_input(&length);
    if (length && data[length - 1] != '\0') die(USAGE, "the previous records do not end with a NUL");
    const char *fields[9];
    int count = 0;
    for (size_t at = 0; at < length; at += strlen(data + at) + 1) {
        fields[count++] = data + at;
        if (count < 9) continue;
        count = 0;
        if (strcmp(fields[0], "file") != 0 || !is_hex_digest(fields[7])) continue;
        char key[256];
        int length = snprintf(key, sizeof key, "%s:%s:%s:%s", fields[3], fields[4], fields[5], fields[6]);
        if (length > 0 && (size_t)length < sizeof key) remember(table, fields[1], key, fields[7]);
    }
    if (count) die(USAGE, "the previous records are not groups of 9 fields");
    free(data);
    sort_table(table);
}

/* --- the walk -------------------------------------------------------------------------------------- */

struct walk {
    int root;
    const struct table *previous;
    struct buffer out;                      /* the records, written to stdout at the very end */
    char **pending;                         /* directories still to list, relative to root ("" is root) */
    size_t pending_count, pending_capacity; /* an explicit stack: no recursion as deep as the tree */
};

static unsigned char hash_data[CHUNK];

static void push(struct walk *walk, const char *relative) {
    if (walk->pending_count == walk->pending_capacity) {
        walk->pending_capacity = walk->pending_capacity ? walk->pending_capacity * 2 : 256;
        walk->pending = grow(walk->pending, walk->pending_capacity * sizeof *walk->pending);
    }
    walk->pending[walk->pending_count++] = copy(relative, strlen(relative));
}

/* Decimal of any value a stat field or st_*tim.tv_sec * 1e9 + tv_nsec can hold (which overflows 64 bits). */
static const char *decimal(char out[48], __int128 value) {
    char digits[48];
    int count = 0, length = 0;
    unsigned __int128 magnitude = value < 0 ? -(unsigned __int128)value : (unsigned __int128)value;
    while (magnitude >> 64) { /* only for absurd times: 128-bit division is a library call */
        digits[count++] = (char)('0' + (int)(magnitude % 10));
        magnitude /= 10;
    }
    uint64_t rest = (uint64_t)magnitude;
    do {
        digits[count++] = (char)('0' + (int)(rest % 10));
        rest /= 10;
    } while (rest);
    if (value < 0) out[length++] = '-';
    while (count) out[length++] = digits[--count];
    out[length] = '\0';
    return out;
}

static __int128 nanoseconds(struct timespec time) {
    return (__int128)time.tv_sec * 1000000000 + time.tv_nsec;
}

struct numbers {
    char mode[48], ino[48], size[48], mtime[48], ctime[48];
    char key[200];
};

static void describe(const struct stat *status, struct numbers *numbers) {
    decimal(numbers->mode, status->st_mode & 07777);
    decimal(numbers->ino, status->st_ino);
    decimal(numbers->size, status->st_size);
    decimal(numbers->mtime, nanoseconds(status->st_mtim));
    decimal(numbers->ctime, nanoseconds(status->st_ctim));
    snprintf(numbers->key, sizeof numbers->key, "%s:%s:%s:%s", numbers->ino, numbers->size, numbers->mtime,
             numbers->ctime);
}

static void emit_described(struct walk *walk, const char *kind, const char *path, const struct numbers *numbers,
                           const char *sha256, const char *target, size_t target_length) {
    append_field(&walk->out, kind, strlen(kind));
    append_field(&walk->out, path, strlen(path));
    append_field(&walk->out, numbers->mode, strlen(numbers->mode));
    append_field(&walk->out, numbers->ino, strlen(numbers->ino));
    append_field(&walk->out, numbers->size, strlen(numbers->size));
    append_field(&walk->out, numbers->mtime, strlen(numbers->mtime));
    append_field(&walk->out, numbers->ctime, strlen(numbers->ctime));
    append_field(&walk->out, sha256, strlen(sha256));
    append_field(&walk->out, target, target_length);
}

static void emit(struct walk *walk, const char *kind, const char *path, const struct stat *status,
                 const char *sha256, const char *target, size_t target_length) {
    struct numbers numbers;
    describe(status, &numbers);
    emit_described(walk, kind, path, &numbers, sha256, target, target_length);
}

/* What manifest.take skips: an entry that vanished, or one it may not look at. */
static int gone(int error) {
    return error == ENOENT || error == EACCES || error == EPERM;
}

/* `path` (relative, no symlink anywhere on it) beneath `root`: openat2 refuses a symlink on the way and
 * anything resolving outside, so a tree changed under us cannot send the walk elsewhere. A path longer
 * than one call takes is opened in pieces, each beneath the one before. */
static int open_beneath(int root, const char *path) {
    struct open_how how = {
        .flags = DIR_FLAGS, .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    char piece[MAX_BENEATH + 1];
    int fd = root;
    for (;;) {
        const char *name = path;
        size_t length = strlen(path);
        if (length > MAX_BENEATH) {
            size_t cut = MAX_BENEATH;
            while (cut && path[cut] != '/') cut--;
            if (!cut) {
                if (fd != root) close(fd);
                errno = ENAMETOOLONG;
                return -1;
            }
            memcpy(piece, path, cut);
            piece[cut] = '\0';
            name = piece;
            path += cut + 1;
        } else {
            path += length;
        }
        int child, tries = 0;
        do child = (int)syscall(SYS_openat2, fd, name, &how, sizeof how);
        while (child < 0 && (errno == EINTR || (errno == EAGAIN && ++tries < 100))); /* EAGAIN: a rename raced */
        int saved = errno;
        if (fd != root) close(fd);
        if (child < 0) {
            errno = saved;
            return -1;
        }
        fd = child;
        if (!*path) return fd;
    }
}

/* A regular file, opened so that nothing it might have been swapped for blocks or follows a link. */
static int open_file(int dir, const char *name) {
    for (int tries = 0;; tries++) {
        int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) return fd;
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK || tries >= 6000) return -1;
        /* Someone holds a lease on it: our open started its break (at most a minute, lease-break-time);
           Python's blocking open would have waited as long. */
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
}

static void hash_fd(int fd, const char *path, char hex[65]) {
    struct sha256 hash;
    sha256_init(&hash);
    for (;;) {
        ssize_t got = read(fd, hash_data, sizeof hash_data);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) die(FAILED, "%s: %s", path, strerror(errno));
        if (got == 0) break;
        sha256_update(&hash, hash_data, (size_t)got);
    }
    sha256_hex(&hash, hex);
}

/* One entry of a directory being listed; returns 0 when it changed kind under us and must be looked at again. */
static int look_once(struct walk *walk, int dir, const char *name, const char *path) {
    struct stat status;
    if (fstatat(dir, name, &status, AT_SYMLINK_NOFOLLOW) != 0) {
        if (gone(errno)) return 1;
        die(FAILED, "%s: %s", path, strerror(errno));
    }
    if (S_ISLNK(status.st_mode)) {
        char target[MAX_LINK], hex[65];
        ssize_t length = readlinkat(dir, name, target, sizeof target);
        if (length < 0 && errno == EINVAL) return 0; /* no longer a symlink */
        if (length < 0 && gone(errno)) return 1;
        if (length < 0) die(FAILED, "%s: %s", path, strerror(errno));
        if ((size_t)length == sizeof target) die(FAILED, "%s: symlink target too long", path);
        struct sha256 hash;
        sha256_init(&hash);
        sha256_update(&hash, target, (size_t)length);
        sha256_hex(&hash, hex);
        emit(walk, "symlink", path, &status, hex, target, (size_t)length);
        return 1;
    }
    if (S_ISDIR(status.st_mode)) {
        emit(walk, "dir", path, &status, "", "", 0);
        push(walk, path);
        return 1;
    }
    if (!S_ISREG(status.st_mode)) {
        emit(walk, "other", path, &status, "", "", 0);
        return 1;
    }
    struct numbers numbers;
    describe(&status, &numbers);
    const struct known *previous = find(walk->previous, path);
    if (previous && strcmp(previous->key, numbers.key) == 0) {
        emit_described(walk, "file", path, &numbers, previous->sha256, "", 0);
        return 1;
    }
    int fd = open_file(dir, name);
    if (fd < 0 && (errno == ELOOP || errno == ENXIO)) return 0; /* now a symlink, or a socket */
    if (fd < 0 && gone(errno)) return 1;
    if (fd < 0) die(FAILED, "%s: %s", path, strerror(errno));
    if (fstat(fd, &status) != 0) die(FAILED, "%s: %s", path, strerror(errno));
    if (S_ISREG(status.st_mode)) {
        char hex[65];
        hash_fd(fd, path, hex);
        emit(walk, "file", path, &status, hex, "", 0); /* the stat of what was hashed */
    } else if (S_ISDIR(status.st_mode)) {
        emit(walk, "dir", path, &status, "", "", 0);
        push(walk, path);
    } else {
        emit(walk, "other", path, &status, "", "", 0);
    }
    close(fd);
    return 1;
}

static void look(struct walk *walk, int dir, const char *name, const char *path) {
    for (int tries = 0; tries < 16; tries++)
        if (look_once(walk, dir, name, path)) return;
    die(FAILED, "%s: keeps changing while it is looked at", path);
}

static void list_directory(struct walk *walk, const char *relative) {
    const char *shown = *relative ? relative : ".";
    int fd = open_beneath(walk->root, shown);
    if (fd < 0) {
        /* vanished, or no longer a directory (ELOOP: a symlink now stands there) */
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) return;
        die(FAILED, "%s: %s", shown, strerror(errno));
    }
    DIR *dir = fdopendir(fd);
    if (!dir) die(FAILED, "%s: %s", shown, strerror(errno));
    struct buffer path = {0};
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (!entry) {
            if (errno && errno != ENOENT) die(FAILED, "%s: %s", shown, strerror(errno));
            break;
        }
        const char *name = entry->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        path.length = 0;
        if (*relative) {
            append(&path, relative, strlen(relative));
            append(&path, "/", 1);
        }
        append(&path, name, strlen(name));
        look(walk, dirfd(dir), name, path.data);
    }
    free(path.data);
    closedir(dir);
}

/* Every entry under root, into walk->out; `root` is an open directory. */
static void walk_tree(struct walk *walk) {
    push(walk, "");
    while (walk->pending_count) {
        char *relative = walk->pending[--walk->pending_count];
        list_directory(walk, relative);
        free(relative);
    }
}

static void print_manifest(struct walk *walk) {
    if (walk->out.length && write_all(STDOUT_FILENO, walk->out.data, walk->out.length) != 0)
        die(FAILED, "writing the manifest: %s", strerror(errno));
}

static int scan(const char *root) {
    struct table previous = {0};
    load_previous(&previous);
    struct walk walk = {.previous = &previous};
    walk.root = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* the root itself may be a symlink, as for take */
    if (walk.root < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return DONE; /* nothing there: no entries */
        die(FAILED, "%s: %s", root, strerror(errno));
    }
    walk_tree(&walk);
    print_manifest(&walk);
    return DONE;
}

/* --- the tar stream -------------------------------------------------------------------------------- */

/* At least `want` (at most CHUNK) unread bytes contiguous in input_data, unless the stream ends first. */
static size_t input_fill(size_t want) {
    if (input.end - input.start >= want) return input.end - input.start;
    if (input.start) {
        memmove(input_data, input_data + input.start, input.end - input.start);
        input.end -= input.start;
        input.start = 0;
    }
    while (input.end < want && !input.eof) {
        ssize_t got = read(STDIN_FILENO, input_data + input.end, sizeof input_data - input.end);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) die(FAILED, "reading the archive: %s", strerror(errno));
        if (got == 0) input.eof = 1;
        input.end += (size_t)got;
    }
    return input.end;
}

/* `size` bytes of member data and the padding to the next block: written to `fd` and hashed, or skipped. */
static void consume(uint64_t size, int fd, struct sha256 *hash, const char *name) {
    uint64_t padded = size + (BLOCK - size % BLOCK) % BLOCK;
    for (uint64_t done = 0; done < padded;) {
        size_t available = input_fill(1);
        if (!available) die(BAD_ARCHIVE, "truncated archive (in the data of %s)", name);
        uint64_t wanted = (done < size ? size : padded) - done;
        size_t take = available < wanted ? available : (size_t)wanted;
        if (fd >= 0 && done < size) {
            if (write_all(fd, (const char *)input_data + input.start, take) != 0)
                die(FAILED, "%s: %s", name, strerror(errno));
            sha256_update(hash, input_data + input.start, take);
        }
        input.start += take;
        done += take;
    }
}

/* The data of a PAX header or GNU long name member, with a NUL after it. */
static char *read_data(uint64_t size, const char *what) {
    if (size > MAX_HEADER_DATA) die(BAD_ARCHIVE, "a %s of %llu bytes", what, (unsigned long long)size);
    char *data = grow(NULL, (size_t)size + 1);
    uint64_t padded = size + (BLOCK - size % BLOCK) % BLOCK;
    for (uint64_t done = 0; done < padded;) {
        size_t available = input_fill(1);
        if (!available) die(BAD_ARCHIVE, "truncated archive (in a %s)", what);
        size_t take = available < padded - done ? available : (size_t)(padded - done);
        if (done < size) memcpy(data + done, input_data + input.start, take < size - done ? take : size - done);
        input.start += take;
        done += take;
    }
    data[size] = '\0';
    return data;
}

/* A numeric header field: octal digits, space padded, ended by NUL, a space or the field's end (what
 * tarfile's nti reads, minus base-256 and signs, which lg's sender never writes). -1 for anything else. */
static int octal(const unsigned char *field, size_t size, uint64_t *value) {
    size_t i = 0;
    uint64_t number = 0;
    while (i < size && field[i] == ' ') i++;
    for (; i < size && field[i] >= '0' && field[i] <= '7'; i++) {
        if (number >> 60) return -1;
        number = number * 8 + (uint64_t)(field[i] - '0');
    }
    for (; i < size && field[i] != '\0'; i++)
        if (field[i] != ' ') return -1;
    *value = number;
    return 0;
}

static size_t field_length(const unsigned char *field, size_t size) {
    const unsigned char *end = memchr(field, '\0', size);
    return end ? (size_t)(end - field) : size;
}

struct header {
    char type;
    uint64_t mode, size;
    int64_t mtime;
    char *name, *link; /* NUL-terminated copies; PAX may bring names with a NUL inside, hence the lengths */
    size_t name_length, link_length;
};

/* What PAX and GNU headers say about the member after them. */
struct overrides {
    char *name, *link;
    size_t name_length, link_length;
    int has_size, has_mtime;
    uint64_t size;
    int64_t mtime;
    int any; /* some such header came: a member must follow */
};

static void number_field(const unsigned char *block, size_t offset, size_t size, uint64_t *value) {
    if (octal(block + offset, size, value) != 0)
        die(BAD_ARCHIVE, "not a valid tar stream: bad number in a header (offset %zu)", offset);
}

static void parse_header(const unsigned char *block, struct header *header) {
    unsigned sum = 0;
    int signed_sum = 0;
    for (int i = 0; i < BLOCK; i++) {
        unsigned char byte = i >= 148 && i < 156 ? ' ' : block[i];
        sum += byte;
        signed_sum += (signed char)byte;
    }
    uint64_t checksum, ignored;
    number_field(block, 148, 8, &checksum);
    if (checksum != sum && (signed_sum < 0 || checksum != (uint64_t)signed_sum))
        die(BAD_ARCHIVE, "not a valid tar stream: bad header checksum");
    int posix = memcmp(block + 257, "ustar\0" "00", 8) == 0;
    if (!posix && memcmp(block + 257, "ustar  \0", 8) != 0) die(BAD_ARCHIVE, "not a valid tar stream: bad magic");
    number_field(block, 100, 8, &header->mode);
    number_field(block, 108, 8, &ignored); /* uid, gid: not used, but they must be numbers */
    number_field(block, 116, 8, &ignored);
    number_field(block, 124, 12, &header->size);
    uint64_t mtime;
    number_field(block, 136, 12, &mtime);
    header->mtime = (int64_t)mtime; /* at most 11 octal digits: it fits */
    header->type = (char)block[156];
    size_t name_length = field_length(block, 100), prefix_length = posix ? field_length(block + 345, 155) : 0;
    struct buffer name = {0};
    if (prefix_length) {
        append(&name, block + 345, prefix_length);
        append(&name, "/", 1);
    }
    append(&name, block, name_length);
    header->name = name.data;
    header->name_length = name.length;
    header->link_length = field_length(block + 157, 100);
    header->link = copy(block + 157, header->link_length);
    /* old tar: a directory is a regular file whose name ends in '/' (tarfile does the same) */
    if (header->type == '\0' && name_length && block[name_length - 1] == '/') header->type = '5';
}

static void bad_pax(void) {
    die(BAD_ARCHIVE, "not a valid tar stream: bad PAX record");
}

static int64_t pax_number(const char *value, size_t length, int fraction_allowed, int negative_allowed) {
    size_t i = 0;
    int negative = 0;
    if (negative_allowed && length && value[0] == '-') negative = 1, i = 1;
    if (i == length) bad_pax();
    int64_t number = 0;
    size_t digits = 0;
    for (; i < length && value[i] >= '0' && value[i] <= '9'; i++, digits++) {
        if (number > (INT64_MAX - 9) / 10) bad_pax();
        number = number * 10 + (value[i] - '0');
    }
    if (!digits) bad_pax();
    if (i < length && fraction_allowed && value[i] == '.') /* whole seconds are kept: the fraction goes */
        for (i++; i < length; i++)
            if (value[i] < '0' || value[i] > '9') bad_pax();
    if (i != length) bad_pax();
    return negative ? -number : number;
}

/* "%d key=value\n" records (tarfile's framing rules); path, linkpath, size and mtime are what we honour. */
static void parse_pax(const char *data, size_t size, struct overrides *found) {
    size_t at = 0;
    while (at < size && data[at] != '\0') {
        size_t i = at;
        uint64_t length = 0;
        for (; i < size && data[i] >= '0' && data[i] <= '9'; i++)
            if ((length = length * 10 + (uint64_t)(data[i] - '0')) > size) bad_pax();
        if (i == at || i >= size || data[i] != ' ' || length < 5 || at + length > size) bad_pax();
        size_t end = at + length - 1; /* the newline */
        const char *key = data + i + 1;
        if (key >= data + end || data[end] != '\n') bad_pax();
        const char *equals = memchr(key, '=', (size_t)(data + end - key));
        if (!equals || equals == key) bad_pax();
        size_t key_length = (size_t)(equals - key), value_length = (size_t)(data + end - (equals + 1));
        const char *value = equals + 1;
        if (key_length == 4 && memcmp(key, "path", 4) == 0) {
            free(found->name);
            found->name = copy(value, value_length);
            found->name_length = value_length;
        } else if (key_length == 8 && memcmp(key, "linkpath", 8) == 0) {
            free(found->link);
            found->link = copy(value, value_length);
            found->link_length = value_length;
        } else if (key_length == 4 && memcmp(key, "size", 4) == 0) {
            found->size = (uint64_t)pax_number(value, value_length, 0, 0);
            found->has_size = 1;
        } else if (key_length == 5 && memcmp(key, "mtime", 5) == 0) {
            found->mtime = pax_number(value, value_length, 1, 1);
            found->has_mtime = 1;
        }
        at += length;
    }
}

/* tarfile applies a chain of such headers from the outside in: the first one to give a value wins. */
static void merge(struct overrides *into, struct overrides *found) {
    if (found->name && !into->name) {
        into->name = found->name, into->name_length = found->name_length;
        found->name = NULL;
    }
    if (found->link && !into->link) {
        into->link = found->link, into->link_length = found->link_length;
        found->link = NULL;
    }
    if (found->has_size && !into->has_size) into->size = found->size, into->has_size = 1;
    if (found->has_mtime && !into->has_mtime) into->mtime = found->mtime, into->has_mtime = 1;
    free(found->name);
    free(found->link);
    into->any = 1;
}

/* --- extraction ------------------------------------------------------------------------------------ */

struct dir_mode {
    char *name;
    mode_t mode;
};

struct extractor {
    int root;
    int has_owner;
    uid_t uid;
    gid_t gid;
    char *cached_parent; /* the parent directory last walked to, and its fd: members come grouped by */
    int cached_fd;       /* directory, and walking the same parents again for each costs as much as the file */
    int cache_stale;     /* a directory was removed since: the fd may name a deleted one */
    struct dir_mode *modes;
    size_t mode_count, mode_capacity;
    struct table written; /* what was written, as the final manifest's previous records */
    unsigned long long files, bytes;
};

static void forget_parent(struct extractor *x) {
    if (x->cached_parent) {
        close(x->cached_fd);
        free(x->cached_parent);
        x->cached_parent = NULL;
    }
    x->cache_stale = 0;
}

/* check_relative_path: the member's name normalised, or refused. */
static char *check_relative_path(const char *path, size_t length) {
    if (!length || memchr(path, '\0', length) || path[0] == '/')
        die(UNSAFE, "path '%s' is not a relative path", path);
    struct buffer parts = {0};
    append(&parts, "", 0);
    for (size_t at = 0; at < length;) {
        const char *slash = memchr(path + at, '/', length - at);
        size_t part = slash ? (size_t)(slash - (path + at)) : length - at;
        if (part == 2 && memcmp(path + at, "..", 2) == 0) die(UNSAFE, "path '%s' is empty or leaves its root", path);
        if (part && !(part == 1 && path[at] == '.')) {
            if (parts.length) append(&parts, "/", 1);
            append(&parts, path + at, part);
        }
        at += part + 1;
    }
    if (!parts.length) die(UNSAFE, "path '%s' is empty or leaves its root", path);
    return parts.data;
}

/* Only "" and "." components: the archive's own root entry ("./"). */
static int names_nothing(const char *path, size_t length) {
    for (size_t i = 0; i < length; i++)
        if (path[i] != '/' && !(path[i] == '.' && (i + 1 == length || path[i + 1] == '/') &&
                                (i == 0 || path[i - 1] == '/')))
            return 0;
    return 1;
}

/* check_link_target: refuse a target that is absolute or climbs out of the root, read lexically. */
static void check_link_target(const char *name, const char *target, size_t length) {
    int escapes = !length || memchr(target, '\0', length) || target[0] == '/';
    /* normpath(join(dirname(name), target)) starts with ".." exactly when a ".." meets depth 0 */
    long depth = 0;
    for (const char *part = name; !escapes;) {
        const char *slash = strchr(part, '/');
        if (!slash) break;
        depth++;
        part = slash + 1;
    }
    for (size_t at = 0; !escapes && at < length;) {
        const char *slash = memchr(target + at, '/', length - at);
        size_t part = slash ? (size_t)(slash - (target + at)) : length - at;
        if (part == 2 && memcmp(target + at, "..", 2) == 0) {
            if (depth == 0) escapes = 1;
            else depth--;
        } else if (part && !(part == 1 && target[at] == '.')) {
            depth++;
        }
        at += part + 1;
    }
    if (escapes) die(UNSAFE, "%s: symlink to '%s' points outside the target directory", name, target);
}

static void chown_at(struct extractor *x, int dir, const char *leaf, const char *name) {
    if (x->has_owner && fchownat(dir, leaf, x->uid, x->gid, AT_SYMLINK_NOFOLLOW) != 0)
        die(FAILED, "%s: %s", name, strerror(errno));
}

/* The directory `name` goes in, walked from the root one component at a time with O_NOFOLLOW (created
 * when `create`): nothing is ever written through a symlink. The fd belongs to the extractor. */
static int open_parent(struct extractor *x, const char *name, int create) {
    const char *last = strrchr(name, '/');
    if (!last) return x->root;
    size_t length = (size_t)(last - name);
    if (x->cached_parent && !x->cache_stale && strlen(x->cached_parent) == length &&
        memcmp(x->cached_parent, name, length) == 0)
        return x->cached_fd;
    forget_parent(x);
    char *parent = copy(name, length);
    int fd = x->root;
    for (char *part = parent, *slash; part; part = slash) {
        slash = strchr(part, '/');
        if (slash) *slash++ = '\0';
        if (create) {
            if (mkdirat(fd, part, 0755) == 0) chown_at(x, fd, part, name);
            else if (errno != EEXIST) die(FAILED, "%s: %s", name, strerror(errno));
        }
        int child = openat(fd, part, DIR_FLAGS);
        if (child < 0) die(UNSAFE, "%s: '%s' on its path is a symlink or not a directory", name, part);
        if (fd != x->root) close(fd);
        fd = child;
        if (slash) slash[-1] = '/';
    }
    x->cached_parent = parent;
    x->cached_fd = fd;
    return fd;
}

/* Make room for the member: a directory stays for a directory member, anything else goes. */
static void clear(struct extractor *x, int parent, const char *name, const char *leaf, int keep_dir) {
    struct stat status;
    if (fstatat(parent, leaf, &status, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return;
        die(FAILED, "%s: %s", name, strerror(errno));
    }
    if (S_ISDIR(status.st_mode)) {
        if (keep_dir) return;
        if (unlinkat(parent, leaf, AT_REMOVEDIR) != 0) die(FAILED, "%s: cannot replace a directory", name);
        x->cache_stale = 1; /* the parent last walked to may be what just went: walk afresh next time */
    } else if (unlinkat(parent, leaf, 0) != 0) {
        die(FAILED, "%s: %s", name, strerror(errno));
    }
}

/* Each maker below tries first and clears the way only when something is there: one system call fewer per
 * member in the usual case, an empty destination. */

static void make_dir(struct extractor *x, int parent, const char *name, const char *leaf, uint64_t mode) {
    if (mkdirat(parent, leaf, 0755) != 0) {
        if (errno != EEXIST) die(FAILED, "%s: %s", name, strerror(errno));
        clear(x, parent, name, leaf, 1);
        if (mkdirat(parent, leaf, 0755) != 0 && errno != EEXIST) die(FAILED, "%s: %s", name, strerror(errno));
    }
    chown_at(x, parent, leaf, name);
    if (x->mode_count == x->mode_capacity) {
        x->mode_capacity = x->mode_capacity ? x->mode_capacity * 2 : 64;
        x->modes = grow(x->modes, x->mode_capacity * sizeof *x->modes);
    }
    x->modes[x->mode_count++] = (struct dir_mode){copy(name, strlen(name)), (mode_t)(mode & 0777)};
}

static void write_file(struct extractor *x, int parent, const char *name, const char *leaf, uint64_t mode,
                       uint64_t size, int64_t mtime) {
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int out = openat(parent, leaf, flags, 0600);
    if (out < 0 && errno == EEXIST) {
        clear(x, parent, name, leaf, 0);
        out = openat(parent, leaf, flags, 0600);
    }
    if (out < 0) die(FAILED, "%s: %s", name, strerror(errno));
    struct sha256 hash;
    sha256_init(&hash);
    consume(size, out, &hash, name);
    if (x->has_owner && fchown(out, x->uid, x->gid) != 0) die(FAILED, "%s: %s", name, strerror(errno));
    if (fchmod(out, (mode_t)(mode & 0777)) != 0) die(FAILED, "%s: %s", name, strerror(errno));
    struct timespec times[2] = {{(time_t)mtime, 0}, {(time_t)mtime, 0}};
    (void)futimens(out, times); /* an absurd timestamp is not worth failing the transfer for */
    struct stat left;             /* after the last change to it: what the manifest's lstat will see */
    if (fstat(out, &left) != 0) die(FAILED, "%s: %s", name, strerror(errno));
    if (close(out) != 0) die(FAILED, "%s: %s", name, strerror(errno));
    char hex[65];
    struct numbers numbers;
    sha256_hex(&hash, hex);
    describe(&left, &numbers);
    remember(&x->written, name, numbers.key, hex);
    x->files++;
    x->bytes += size;
}

static void make_symlink(struct extractor *x, int parent, const char *name, const char *leaf, const char *target) {
    int made = symlinkat(target, parent, leaf);
    if (made != 0 && errno == EEXIST) {
        clear(x, parent, name, leaf, 0);
        made = symlinkat(target, parent, leaf);
    }
    if (made != 0) die(FAILED, "%s: %s", name, strerror(errno));
    chown_at(x, parent, leaf, name);
    x->files++;
}

static void extract(struct extractor *x, struct header *member) {
    if (member->type == '5' && names_nothing(member->name, member->name_length)) return; /* "./" */
    char *name = check_relative_path(member->name, member->name_length);
    int regular = member->type == '0' || member->type == '\0';
    if (!regular && member->type != '5' && member->type != '2')
        die(UNSAFE, "%s: only files, directories and symlinks may be transferred", name);
    if (member->type == '2') check_link_target(name, member->link, member->link_length);
    int parent = open_parent(x, name, 1);
    const char *slash = strrchr(name, '/'), *leaf = slash ? slash + 1 : name;
    if (regular) write_file(x, parent, name, leaf, member->mode, member->size, member->mtime);
    else if (member->type == '5') make_dir(x, parent, name, leaf, member->mode);
    else make_symlink(x, parent, name, leaf, member->link);
    free(name);
}

/* Last, so a read-only directory does not stop its own members from being written. */
static void apply_dir_modes(struct extractor *x) {
    while (x->mode_count) {
        struct dir_mode *item = &x->modes[--x->mode_count];
        int parent = open_parent(x, item->name, 0);
        const char *slash = strrchr(item->name, '/'), *leaf = slash ? slash + 1 : item->name;
        int dir = openat(parent, leaf, DIR_FLAGS);
        if (dir < 0 || fchmod(dir, item->mode) != 0) die(FAILED, "%s: %s", item->name, strerror(errno));
        close(dir);
        free(item->name);
    }
}

static int all_zero(const unsigned char *block) {
    for (int i = 0; i < BLOCK; i++)
        if (block[i]) return 0;
    return 1;
}

/* mkdir -p, following symlinks (os.makedirs(dest, exist_ok=True)). */
static void make_dirs(const char *path) {
    char *walked = copy(path, strlen(path));
    for (char *slash = strchr(walked + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        (void)mkdir(walked, 0777); /* an error here shows in the components after it */
        *slash = '/';
    }
    if (mkdir(walked, 0777) != 0 && errno != EEXIST) die(FAILED, "%s: %s", path, strerror(errno));
    free(walked);
}

static void read_archive(struct extractor *x) {
    struct overrides next = {0};
    for (;;) {
        size_t available = input_fill(BLOCK);
        if (available < BLOCK)
            die(BAD_ARCHIVE, available ? "truncated archive (in a header)" : "truncated archive (no end block)");
        const unsigned char *block = input_data + input.start;
        if (all_zero(block)) {
            input.start += BLOCK;
            if (next.any) die(BAD_ARCHIVE, "not a valid tar stream: the archive ends after an extended header");
            return;
        }
        struct header header;
        parse_header(block, &header);
        input.start += BLOCK;
        if (header.type == 'x' || header.type == 'L' || header.type == 'K') {
            const char *what = header.type == 'x' ? "PAX header" : "GNU long name";
            char *data = read_data(header.size, what);
            struct overrides found = {0};
            if (header.type == 'x') {
                parse_pax(data, (size_t)header.size, &found);
            } else {
                size_t length = strlen(data);
                char *text = copy(data, length);
                if (header.type == 'L') found.name = text, found.name_length = length;
                else found.link = text, found.link_length = length;
            }
            merge(&next, &found);
            free(data);
        } else if (header.type == 'g') {
            consume(header.size, -1, NULL, "a global PAX header");
        } else {
            if (next.name) {
                free(header.name);
                header.name = next.name, header.name_length = next.name_length;
            }
            if (next.link) {
                free(header.link);
                header.link = next.link, header.link_length = next.link_length;
            }
            if (next.has_size) header.size = next.size;
            if (next.has_mtime) header.mtime = next.mtime;
            next = (struct overrides){0};
            extract(x, &header);
        }
        free(header.name);
        free(header.link);
    }
}

static int put(const char *dest, int has_owner, uid_t uid, gid_t gid) {
    struct extractor x = {.has_owner = has_owner, .uid = uid, .gid = gid};
    make_dirs(dest);
    x.root = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* DEST itself may be a symlink, as in Extractor */
    if (x.root < 0) die(FAILED, "%s: %s", dest, strerror(errno));
    if (has_owner && fchown(x.root, uid, gid) != 0) die(FAILED, "%s: %s", dest, strerror(errno));
    read_archive(&x);
    drain(); /* Python pads the archive to a 10240-byte record: read it all, before the slow part */
    apply_dir_modes(&x);
    forget_parent(&x);
    sort_table(&x.written);
    struct walk walk = {.root = x.root, .previous = &x.written};
    walk_tree(&walk);
    print_manifest(&walk);
    fprintf(stderr, "files=%llu bytes=%llu\n", x.files, x.bytes);
    return DONE;
}

/* --- command line ---------------------------------------------------------------------------------- */

static int parse_id(const char *text, const char *end, unsigned long *value) {
    if (text == end) return -1;
    unsigned long number = 0;
    for (const char *c = text; c < end; c++) {
        if (*c < '0' || *c > '9' || number > 429496729) return -1;
        number = number * 10 + (unsigned long)(*c - '0');
    }
    if (number >= 0xffffffffUL) return -1; /* (uid_t)-1 means "leave it" to chown */
    *value = number;
    return 0;
}

static int run_command(int argc, char **argv) {
    static const char *usage_text =
        "usage: lg-tree put DEST [--owner=UID:GID] | lg-tree scan ROOT | lg-tree serve";
    if (argc >= 2 && strcmp(argv[1], "put") == 0) {
        const char *dest = NULL;
        int has_owner = 0;
        unsigned long uid = 0, gid = 0;
        for (int i = 2; i < argc; i++) {
            if (strncmp(argv[i], "--owner=", 8) == 0) {
                const char *ids = argv[i] + 8, *colon = strchr(ids, ':');
                if (!colon || parse_id(ids, colon, &uid) || parse_id(colon + 1, colon + strlen(colon), &gid))
                    die(USAGE, "--owner wants UID:GID, not '%s'", ids);
                has_owner = 1;
            } else if (!dest && argv[i][0]) {
                dest = argv[i];
            } else {
                die(USAGE, "%s", usage_text);
            }
        }
        if (!dest) die(USAGE, "%s", usage_text);
        return put(dest, has_owner, (uid_t)uid, (gid_t)gid);
    }
    if (argc == 3 && strcmp(argv[1], "scan") == 0 && argv[2][0]) return scan(argv[2]);
    die(USAGE, "%s", usage_text);
}

/* --- serve: many commands over one pair of pipes -------------------------------------------------------
 *
 * Starting a process is what a put or a scan of a small workspace costs most under TCG: the agent's spawn of
 * lg-tree took about 25 ms, the work itself a few. So the agent keeps one `lg-tree serve` (started in the
 * template, alive in every clone) and sends it requests on stdin:
 *
 *   u32 length, then that many bytes: the command's arguments, each ended by a NUL ("put\0/workspace\0")
 *   the command's stdin as frames: u32 length + bytes, ended by a frame of length 0
 *
 * and reads one answer per request on stdout: u32 exit status, u32 stdout length, u32 stderr length, then
 * the two outputs. Numbers are big-endian. Each command runs in a child forked for it, exactly as it runs
 * alone (its stdin a pipe fed from the frames, its outputs in memory files), so a failure or a crash of one
 * command ends only that child; the server relays the rest of the frames and answers for it. EOF on stdin
 * between requests ends the server. */

#define SERVE_MAX_ARGS (64 * 1024)
#define SERVE_CRASHED 5

static int read_exact(int fd, void *data, size_t length) {
    unsigned char *at = data;
    while (length) {
        ssize_t got = read(fd, at, length);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        at += got;
        length -= (size_t)got;
    }
    return 0;
}

static uint32_t get_u32(const unsigned char *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 | bytes[3];
}

static void put_u32(unsigned char *bytes, uint32_t value) {
    bytes[0] = (unsigned char)(value >> 24);
    bytes[1] = (unsigned char)(value >> 16);
    bytes[2] = (unsigned char)(value >> 8);
    bytes[3] = (unsigned char)value;
}

/* Copy the request's frames to `sink` (the child's stdin) until the empty frame. A child that stopped
 * reading (EPIPE) gets no more, but the frames are still read: the next request starts after them. */
static int relay_frames(int sink) {
    unsigned char length[4];
    for (;;) {
        if (read_exact(STDIN_FILENO, length, 4) != 0) return -1;
        uint32_t remaining = get_u32(length);
        if (remaining == 0) return 0;
        while (remaining) {
            size_t want = remaining < sizeof input_data ? remaining : sizeof input_data;
            ssize_t got = read(STDIN_FILENO, input_data, want);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return -1;
            remaining -= (uint32_t)got;
            if (sink >= 0 && write_all(sink, (const char *)input_data, (size_t)got) != 0) {
                close(sink);
                sink = -1;
            }
        }
    }
}

static char *slurp(int fd, size_t *length) {
    struct buffer all = {0};
    append(&all, "", 0);
    if (lseek(fd, 0, SEEK_SET) == 0) {
        for (;;) {
            ssize_t got = read(fd, input_data, sizeof input_data);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            append(&all, input_data, (size_t)got);
        }
    }
    *length = all.length;
    return all.data;
}

static int answer(uint32_t code, int out_fd, int err_fd, const char *note) {
    size_t out_length, err_length;
    char *out = slurp(out_fd, &out_length), *err = slurp(err_fd, &err_length);
    if (note) { /* the child said nothing usable: the answer carries the server's own account */
        out_length = 0;
        free(err);
        err = copy(note, strlen(note));
        err_length = strlen(note);
    }
    unsigned char head[12];
    put_u32(head, code);
    put_u32(head + 4, (uint32_t)out_length);
    put_u32(head + 8, (uint32_t)err_length);
    int failed = write_all(STDOUT_FILENO, (const char *)head, sizeof head) || write_all(STDOUT_FILENO, out, out_length) ||
                 write_all(STDOUT_FILENO, err, err_length);
    free(out);
    free(err);
    return failed ? -1 : 0;
}

/* The arguments of one request: NUL-ended strings, at most 32 of them. */
static int split_arguments(char *bytes, size_t length, char **argv, int most) {
    int argc = 0;
    argv[argc++] = "lg-tree";
    for (size_t start = 0; start < length;) {
        char *end = memchr(bytes + start, '\0', length - start);
        if (!end || argc == most - 1) return -1;
        argv[argc++] = bytes + start;
        start = (size_t)(end - bytes) + 1;
    }
    argv[argc] = NULL;
    return argc;
}

static int serve_one(char *arguments, size_t length) {
    char *argv[33];
    int argc = split_arguments(arguments, length, argv, 33);
    int out_fd = memfd_create("lg-tree-out", MFD_CLOEXEC), err_fd = memfd_create("lg-tree-err", MFD_CLOEXEC);
    int feed[2];
    if (out_fd < 0 || err_fd < 0 || pipe2(feed, O_CLOEXEC) != 0) {
        if (out_fd >= 0) close(out_fd);
        if (err_fd >= 0) close(err_fd);
        if (relay_frames(-1) != 0) return -1;
        return answer(FAILED, -1, -1, "lg-tree: serve: cannot make the pipes of a command");
    }
    pid_t child = argc < 2 ? -1 : fork();
    if (child == 0) {
        if (dup2(feed[0], STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
            _exit(FAILED);
        close(feed[1]);
        fflush(stderr);
        exit(run_command(argc, argv));
    }
    close(feed[0]);
    int relayed = relay_frames(child > 0 ? feed[1] : -1);
    close(feed[1]);
    int status = 0, result;
    const char *note = NULL;
    if (child < 0) {
        note = argc < 2 ? "lg-tree: serve: a request without a command" : "lg-tree: serve: cannot fork";
        result = argc < 2 ? USAGE : FAILED;
    } else {
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) continue;
        result = WIFEXITED(status) ? WEXITSTATUS(status) : SERVE_CRASHED;
        if (!WIFEXITED(status)) note = "lg-tree: the command crashed (a bug in lg-tree)";
    }
    int sent = relayed == 0 ? answer((uint32_t)result, out_fd, err_fd, note) : -1;
    close(out_fd);
    close(err_fd);
    return sent;
}

static int serve(void) {
    signal(SIGPIPE, SIG_IGN); /* a child that stopped reading its stdin is an EPIPE, not our death */
    for (;;) {
        unsigned char length[4];
        if (read_exact(STDIN_FILENO, length, 4) != 0) return DONE; /* the agent went away: so do we */
        uint32_t size = get_u32(length);
        if (size > SERVE_MAX_ARGS) return FAILED; /* out of step with the agent: it starts a new server */
        char *arguments = grow(NULL, size + 1);
        if (read_exact(STDIN_FILENO, arguments, size) != 0) return DONE;
        int sent = serve_one(arguments, size);
        free(arguments);
        if (sent != 0) return FAILED;
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "serve") == 0) return serve();
    return run_command(argc, argv);
}
