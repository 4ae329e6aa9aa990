/* SPDX-License-Identifier: MIT */
/* edgectl watch: the status once a second on one screen, with sparklines of the loss and
 * the throughput. On a TTY the keyboard is read unbuffered (q quits) and the cursor hidden;
 * both are restored on every way out, Ctrl-C included (it only sets a flag). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

#define HISTORY 60 /* samples in the sparklines: a minute */

static volatile sig_atomic_t stop;

static void on_stop(int sig) {
        stop = 1;
}

typedef struct term_state {
        struct termios saved;
        bool raw, cursor_hidden;
} term_state;

static void term_setup(term_state *t, bool out_tty) {
        struct termios raw;

        if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0) {
                raw = t->saved;
                /* keys arrive one by one and unechoed; ISIG stays on, so Ctrl-C is SIGINT */
                raw.c_lflag &= ~(tcflag_t) (ICANON | ECHO);
                raw.c_cc[VMIN] = 0;
                raw.c_cc[VTIME] = 0;
                t->raw = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
        }
        if (out_tty) {
                fputs("\033[?25l", stdout);
                t->cursor_hidden = true;
        }
}

static void term_restore(term_state *t) {
        if (t->raw)
                tcsetattr(STDIN_FILENO, TCSANOW, &t->saved);
        if (t->cursor_hidden)
                fputs("\033[?25h\n", stdout);
        fflush(stdout);
}

static void push(double *h, size_t *n, double v) {
        if (*n == HISTORY) {
                memmove(h, h + 1, (HISTORY - 1) * sizeof(double));
                (*n)--;
        }
        h[(*n)++] = v;
}

static double num_or_nan(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);
        return json_is_number(v) ? json_number_value(v) : NAN;
}

static int draw(ctl_context *c, json_t *status, const double *loss, const double *tps, size_t n,
                bool interactive) {
        char spark[HISTORY * 4 + 1], clock[16], last[32];
        char *text = NULL;
        struct tm tm;
        int r;

        r = ctl_format_status(status, &c->style, &text);
        if (r < 0)
                return r;
        localtime_r(&c->style.now, &tm);
        strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
        if (c->stdout_tty)
                fputs("\033[H\033[2J", stdout); /* home, clear */
        printf("edged at %s%s\n\n%s\n", clock, interactive ? "  (q to quit)" : "", text);
        free(text);
        snprintf(last, sizeof(last), isnan(loss[n - 1]) ? "-" : "%.3f", loss[n - 1]);
        printf("Loss        %s %s\n", ctl_sparkline(loss, n, c->style.utf8, spark, sizeof(spark)),
               last);
        snprintf(last, sizeof(last), isnan(tps[n - 1]) ? "-" : "%.0f tokens/s", tps[n - 1]);
        printf("Throughput  %s %s\n", ctl_sparkline(tps, n, c->style.utf8, spark, sizeof(spark)),
               last);
        if (!c->stdout_tty)
                putchar('\n'); /* frames apart in a log or a pipe */
        return fflush(stdout) == 0 ? 0 : -EIO;
}

/* Waits up to a second; true when the user asked to quit (q, Ctrl-C, SIGTERM). */
static bool wait_tick(bool keyboard) {
        struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
        double deadline;
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        deadline = (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9 + 1.0;
        while (!stop) {
                clock_gettime(CLOCK_MONOTONIC, &ts);
                int left =
                        (int) ((deadline - (double) ts.tv_sec - (double) ts.tv_nsec * 1e-9) * 1000);
                if (left <= 0)
                        return false;
                int r = poll(&pfd, keyboard ? 1 : 0, left);
                if (r > 0) {
                        char ch;
                        ssize_t k = read(STDIN_FILENO, &ch, 1);
                        if (k == 1 && (ch == 'q' || ch == 'Q'))
                                return true;
                        if (k == 0)
                                keyboard = false; /* end of input: just wait */
                }
        }
        return true;
}

int ctl_watch(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        static const struct option opts[] = { { "count", required_argument, NULL, 'n' },
                                              CTL_GLOBAL_OPTIONS,
                                              {} };
        double loss[HISTORY], tps[HISTORY];
        size_t n_hist = 0, n_hist2 = 0;
        struct sigaction sa = { .sa_handler = on_stop }, old_int, old_term;
        term_state term = {};
        unsigned long count = 0;
        int opt, r = CTL_EXIT_OK;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "hn:", opts, NULL)) >= 0) {
                if (opt == 'n') {
                        char *end;
                        errno = 0;
                        count = strtoul(optarg, &end, 10);
                        if (errno || end == optarg || *end || *optarg == '-' || count == 0) {
                                ctl_usage_error(v, "--count: '%s' is not a positive whole number",
                                                optarg);
                                return CTL_EXIT_USAGE;
                        }
                } else if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                        return r;
        }
        if (optind < argc) {
                ctl_usage_error(v, "unexpected argument '%s'", argv[optind]);
                return CTL_EXIT_USAGE;
        }

        /* no SA_RESTART: the signal must end poll() at once */
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        bool keyboard = isatty(STDIN_FILENO) && !c->json;
        if (!c->json)
                term_setup(&term, c->stdout_tty);
        r = CTL_EXIT_OK;
        for (unsigned long i = 0; !stop && (count == 0 || i < count); i++) {
                json_t *status = NULL;

                if (i > 0 && wait_tick(keyboard))
                        break;
                r = ctl_call(c, json_pack("{s:s}", "cmd", "status"), &status);
                if (r != CTL_EXIT_OK)
                        break;
                c->style.now = time(NULL);
                if (c->json)
                        r = ctl_print_json(c, status);
                else {
                        push(loss, &n_hist, num_or_nan(status, "loss"));
                        push(tps, &n_hist2, num_or_nan(status, "tokens_per_s"));
                        r = draw(c, status, loss, tps, n_hist, keyboard) < 0 ? CTL_EXIT_FAILURE
                                                                             : CTL_EXIT_OK;
                }
                json_decref(status);
                if (r != CTL_EXIT_OK)
                        break;
        }
        term_restore(&term);
        if (stop && r == CTL_EXIT_FAILURE)
                r = CTL_EXIT_OK; /* Ctrl-C during a request is still a clean exit */
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        return r;
}
