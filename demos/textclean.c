/* SPDX-License-Identifier: MIT */
/* textclean.c - clean a text corpus line by line with fp_pool_imap and a
 * progress bar: the tutorial's text-processing example, and its pitfall.
 *
 * Corpus: the licence texts of /usr/share/common-licenses (present on every
 * Debian system), else /usr/share/dict/words, else generated words; repeated
 * until it holds TARGET lines (200,000 by default, 1,000,000 with --full).
 *
 * Cleaning one line: lowercase, punctuation to blanks, runs of blanks
 * collapsed, English stop words dropped. The sequential loop and
 * fp_pool_imap (chunksize 64: 64 lines per message, not one) must produce
 * the same bytes. Progress uses FP_PROGRESS_AUTO: a tqdm-like bar when
 * stderr is a terminal, joblib-style lines when it is a pipe or a file.
 *
 * The pitfall (from the Python tutorial): map/imap apply the function to
 * EACH ELEMENT of what they are given. In Python, pool.map(clean, text)
 * with text a str iterates its characters and returns one result per
 * character. In C the items are explicit, but the lesson is the same: the
 * demo feeds a three-line text as its characters, as one item, and as its
 * lines, and prints how many results each gives.
 */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/demo.h"

#define MAX_LINE 4096

/* English stop words, sorted for bsearch. */
static const char *const stop_words[] = {
    "a",     "about", "after", "all",   "also",  "an",    "and",   "any",
    "are",   "as",    "at",    "be",    "been",  "but",   "by",    "can",
    "could", "do",    "does",  "each",  "for",   "from",  "had",   "has",
    "have",  "he",    "her",   "his",   "how",   "i",     "if",    "in",
    "into",  "is",    "it",    "its",   "may",   "more",  "must",  "no",
    "not",   "of",    "on",    "one",   "or",    "other", "our",   "out",
    "shall", "she",   "so",    "some",  "such",  "than",  "that",  "the",
    "their", "them",  "then",  "there", "these", "they",  "this",  "those",
    "to",    "under", "up",    "upon",  "us",    "was",   "we",    "were",
    "what",  "when",  "which", "who",   "will",  "with",  "would", "you",
    "your"};
#define NSTOP (sizeof stop_words / sizeof stop_words[0])

/* The corpus: lines stored back to back. */
typedef struct corpus {
  char *text;    /* all lines, each NUL-terminated */
  size_t *start; /* offset of each line in text */
  size_t *len;   /* length of each line */
  size_t n, cap, tlen, tcap;
} corpus;

/* bsearch comparator: key string against a stop word pointer. */
static int stop_cmp(const void *key, const void *elem) {
  return strcmp(key, *(const char *const *)elem);
}

/* Cleans the n bytes at s into out (at least n + 1 bytes) and returns the
 * cleaned length. Words are runs of letters and digits. */
static size_t clean_line(const char *s, size_t n, char *out) {
  size_t o = 0, i = 0;
  char word[MAX_LINE];
  while (i < n) {
    size_t w = 0;
    while (i < n && !isalnum((unsigned char)s[i]))
      i++;
    while (i < n && isalnum((unsigned char)s[i])) {
      if (w < sizeof word - 1)
        word[w++] = (char)tolower((unsigned char)s[i]);
      i++;
    }
    if (w == 0)
      break;
    word[w] = '\0';
    if (bsearch(word, stop_words, NSTOP, sizeof stop_words[0], stop_cmp))
      continue;
    if (o > 0)
      out[o++] = ' ';
    memcpy(out + o, word, w);
    o += w;
  }
  out[o] = '\0';
  return o;
}

/* Task: one line (a string) in, the cleaned line out. */
static int clean_task(fp_reader *args, fp_writer *out) {
  const char *s;
  size_t n;
  char buf[MAX_LINE + 1];
  int rc = fp_read_str(args, &s, &n);
  if (rc < 0)
    return rc;
  if (n > MAX_LINE)
    n = MAX_LINE; /* corpus lines are short; cap defensively */
  return fp_write_strn(out, buf, clean_line(s, n, buf));
}

/* Makes room for one more line of n bytes (and its NUL). */
static void corpus_reserve(corpus *c, size_t n) {
  if (c->n == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 4096;
    c->start = realloc(c->start, sizeof(size_t) * c->cap);
    c->len = realloc(c->len, sizeof(size_t) * c->cap);
  }
  if (c->tlen + n + 1 > c->tcap) {
    c->tcap = c->tcap ? 2 * c->tcap : 1 << 20;
    while (c->tlen + n + 1 > c->tcap)
      c->tcap *= 2;
    c->text = realloc(c->text, c->tcap);
  }
  if (c->start == NULL || c->len == NULL || c->text == NULL) {
    fprintf(stderr, "textclean: out of memory\n");
    exit(2);
  }
}

/* Appends n bytes at s as the next line; room was reserved. */
static void corpus_put(corpus *c, const char *s, size_t n) {
  memcpy(c->text + c->tlen, s, n);
  c->text[c->tlen + n] = '\0';
  c->start[c->n] = c->tlen;
  c->len[c->n++] = n;
  c->tlen += n + 1;
}

/* Appends one line to the corpus. */
static void corpus_add(corpus *c, const char *s, size_t n) {
  if (n > MAX_LINE)
    n = MAX_LINE;
  corpus_reserve(c, n);
  corpus_put(c, s, n);
}

/* Appends a copy of line i. Its bytes are read after the text grew: the
 * growth may move them (reading them through a pointer taken before
 * would read freed memory). */
static void corpus_repeat(corpus *c, size_t i) {
  size_t n = c->len[i];
  corpus_reserve(c, n);
  corpus_put(c, c->text + c->start[i], n);
}

/* Adds the lines of one file; returns the number added. */
static size_t add_file(corpus *c, const char *path) {
  FILE *f = fopen(path, "r");
  char *line = NULL;
  size_t cap = 0, added = 0;
  ssize_t n;
  if (f == NULL)
    return 0;
  while ((n = getline(&line, &cap, f)) >= 0) {
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      n--;
    corpus_add(c, line, (size_t)n);
    added++;
  }
  free(line);
  fclose(f);
  return added;
}

/* qsort order of directory entry names. */
static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads the licence texts (sorted by name, so the corpus is the same on
 * every run); returns the number of lines. */
static size_t load_licenses(corpus *c, const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char *names[256], path[1024];
  size_t nn = 0, lines = 0;
  if (d == NULL)
    return 0;
  while ((e = readdir(d)) != NULL && nn < 256)
    if (e->d_name[0] != '.')
      names[nn++] = strdup(e->d_name);
  closedir(d);
  qsort(names, nn, sizeof names[0], name_cmp);
  for (size_t i = 0; i < nn; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    lines += add_file(c, path);
    free(names[i]);
  }
  return lines;
}

/* Generates `lines` lines of words from a fixed seed (no corpus found). */
static void generate(corpus *c, size_t lines) {
  static const char *const words[] = {
      "The",     "software", "is",    "provided", "as",     "is,",
      "without", "warranty", "of",    "any",      "kind;",  "Licence",
      "Copy",    "modify",   "and",   "share",    "Source", "code!",
      "Program", "(the",     "Work)", "may",      "be",     "used."};
  demo_rng r;
  char buf[256];
  demo_rng_seed(&r, 99);
  for (size_t i = 0; i < lines; i++) {
    size_t n = 0, nw = 4 + demo_rng_below(&r, 9);
    for (size_t k = 0; k < nw; k++)
      n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", k ? " " : "",
                            words[demo_rng_below(&r, 24)]);
    corpus_add(c, buf, n);
  }
}

/* Runs imap over `items` and returns the number of results. */
static size_t count_results(fp_pool *pool, const fp_writer *items) {
  fp_iter *it;
  fp_reader item;
  size_t n = 0;
  int rc;
  demo_check(fp_pool_imap(pool, clean_task, items, NULL, &it), "fp_pool_imap");
  while ((rc = fp_iter_next(it, &item, FP_FOREVER)) == 0)
    n++;
  if (rc != FP_EOF)
    demo_check(rc, "fp_iter_next");
  fp_iter_free(it);
  return n;
}

/* The pitfall: one text given as characters, as one item, and as lines. */
static void pitfall(const demo_opts *o, fp_pool *pool) {
  const char *text = "Copyright (C) The Free Software Foundation.\n"
                     "Everyone is permitted to copy this document,\n"
                     "but changing it is not allowed.";
  fp_writer chars, whole, lines;
  const char *p = text;
  fp_writer_init(&chars);
  fp_writer_init(&whole);
  fp_writer_init(&lines);
  for (size_t i = 0; text[i]; i++)
    fp_write_strn(&chars, &text[i], 1); /* Python: for ch in text */
  fp_write_str(&whole, text);           /* Python: [text] */
  while (*p) {                          /* Python: text.splitlines() */
    size_t n = strcspn(p, "\n");
    fp_write_strn(&lines, p, n);
    p += n + (p[n] == '\n');
  }
  demo_say(o,
           "pitfall - the function runs once per ELEMENT of the input:\n"
           "  imap(clean, text)              -> %zu results "
           "(one per character!)\n"
           "  imap(clean, [text])            -> %zu result (one item: no "
           "parallelism)\n"
           "  imap(clean, text.splitlines()) -> %zu results (one per line: "
           "what we want)\n",
           count_results(pool, &chars), count_results(pool, &whole),
           count_results(pool, &lines));
  fp_writer_free(&chars);
  fp_writer_free(&whole);
  fp_writer_free(&lines);
}

int main(int argc, char **argv) {
  demo_opts o;
  corpus c = {0};
  size_t target, base, words = 0, show;
  const char *source;
  fp_writer seq_out, par_out, items;
  fp_reader item;
  fp_iter *it;
  fp_pool *pool;
  fp_call_opts co = {.chunksize = 64, .progress = FP_PROGRESS_AUTO};
  double seq, par, t, seq_t[DEMO_REPEAT_MAX], par_t[DEMO_REPEAT_MAX];
  char buf[MAX_LINE + 1];
  int ok, rc;

  demo_parse(argc, argv, &o, "textclean: clean a corpus line by line");
  target = o.full ? 1000000 : 200000;
  source = "/usr/share/common-licenses";
  base = load_licenses(&c, source);
  if (base == 0) {
    source = "/usr/share/dict/words";
    base = add_file(&c, source);
  }
  if (base == 0) {
    source = "generated words";
    generate(&c, 5000);
    base = c.n;
  }
  while (c.n < target) /* repeat the base text up to the target size */
    corpus_repeat(&c, c.n % base);
  demo_set_work(&o, (double)c.n, 0); /* lines cleaned */
  demo_say(&o,
           "textclean: %zu lines (%.1f MB) from %s, %zu lines repeated; "
           "median of %d runs\n",
           c.n, (double)c.tlen / 1e6, source, base, o.repeat);

  pool = demo_pool(&o, FP_PROGRESS_OFF, 0);
  pitfall(&o, pool);

  fp_writer_init(&seq_out);
  fp_writer_init(&items);
  fp_writer_init(&par_out);
  for (int rep = 0; rep < o.repeat; rep++) {
    /* Sequential: [clean(line) for line in lines]. */
    fp_writer_reset(&seq_out);
    t = demo_now();
    for (size_t i = 0; i < c.n; i++)
      fp_write_strn(&seq_out, buf,
                    clean_line(c.text + c.start[i], c.len[i], buf));
    seq_t[rep] = demo_now() - t;

    /* Parallel: imap(clean, lines, chunksize=64), results in order; the
     * time includes encoding the lines, as Python's includes pickling
     * them. The progress bar (or lines) is shown on the first run. */
    fp_writer_reset(&items);
    fp_writer_reset(&par_out);
    words = 0;
    co.progress = rep == 0 && !o.quiet ? FP_PROGRESS_AUTO : FP_PROGRESS_OFF;
    t = demo_now();
    for (size_t i = 0; i < c.n; i++)
      fp_write_strn(&items, c.text + c.start[i], c.len[i]);
    demo_check(fp_pool_imap(pool, clean_task, &items, &co, &it),
               "fp_pool_imap");
    while ((rc = fp_iter_next(it, &item, FP_FOREVER)) == 0) {
      const char *s;
      size_t n;
      demo_check(fp_read_str(&item, &s, &n), "reading a line");
      fp_write_strn(&par_out, s, n);
      words += n > 0;
    }
    if (rc != FP_EOF)
      demo_check(rc, "fp_iter_next");
    fp_iter_free(it);
    par_t[rep] = demo_now() - t;
  }
  seq = demo_median(seq_t, o.repeat);
  par = demo_median(par_t, o.repeat);
  fp_pool_close(pool);
  fp_pool_join(pool);
  fp_pool_free(pool);

  ok = fp_writer_error(&seq_out) == 0 && seq_out.len == par_out.len &&
       memcmp(seq_out.data, par_out.data, seq_out.len) == 0;
  for (show = 0; show + 1 < c.n && c.len[show] < 40; show++)
    ; /* show the first line long enough to be interesting */
  clean_line(c.text + c.start[show], c.len[show], buf);
  demo_say(&o,
           "  line:  \"%.70s\"\n  clean: \"%.70s\"\n"
           "  %zu of %zu lines keep words; parallel output %s sequential\n",
           c.text + c.start[show], buf, words, c.n,
           ok ? "identical to" : "DIFFERS from");
  fp_writer_free(&seq_out);
  fp_writer_free(&par_out);
  fp_writer_free(&items);
  free(c.text);
  free(c.start);
  free(c.len);
  return demo_result(&o, "textclean", seq, par, ok);
}
