/* SPDX-License-Identifier: MIT */
/* edgectl: the command line for edged. Global options, then a subcommand; each subcommand
 * parses the rest (global options may follow it too). See edgectl(1). */
#include <langinfo.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "ctl.h"

static const ctl_verb verbs[] = {
        { "status",
          "Usage: edgectl status [--json]\n\n"
          "Shows whether edged trains and why not: state and reason, cores, tokens/s, loss and\n"
          "validation loss, model and version, harvested core-hours, temperature, power, CPU\n"
          "source, interference, aggregator link. --json prints every field of the protocol's\n"
          "status reply (docs/control-protocol.md), null where not known.\n",
          ctl_status },
        { "pause",
          "Usage: edgectl pause [--for DURATION]\n\n"
          "Pauses training until 'edgectl resume', or for DURATION: 30s, 10m, 2h, 1h30m, 1d\n"
          "(units d h m s, largest first; bare digits are seconds). Needs root or group edged.\n",
          ctl_pause },
        { "resume",
          "Usage: edgectl resume\n\n"
          "Ends a user pause; edged trains again whenever its policy allows.\n",
          ctl_resume },
        { "profile",
          "Usage: edgectl profile [quiet|balanced|performance]\n\n"
          "Without an argument, prints the profile in use. With one, sets it as a runtime\n"
          "override that survives restarts until 'edgectl policy reset'.\n",
          ctl_profile },
        { "policy",
          "Usage: edgectl policy [show]\n"
          "       edgectl policy set KEY=VALUE...\n"
          "       edgectl policy reset [KEY]\n\n"
          "show: every knob, its value and where it came from (built-in, profile, file:line,\n"
          "runtime, fleet; locked knobs say so). set: validates and stores runtime overrides\n"
          "(kept across restarts). reset: drops one override, or all of them.\n",
          ctl_policy },
        { "stats",
          "Usage: edgectl stats [--since TIME]\n\n"
          "Time in each state and each pause reason, tokens trained, checkpoints, updates\n"
          "sent and acknowledged. TIME: a Unix time (1764000000), a duration ago (-1h, 90m,\n"
          "1d; the minus is optional) or 'today' (since local midnight).\n",
          ctl_stats },
        { "watch",
          "Usage: edgectl watch [--count N]\n\n"
          "The status, refreshed every second, with sparklines of the loss and the\n"
          "throughput. q or Ctrl-C quits. --count N stops after N refreshes; --json prints\n"
          "one status object per line instead.\n",
          ctl_watch },
        { "sample",
          "Usage: edgectl sample [--tokens N] [--temperature T] [--seed S] [--quant int8|int4]\n"
          "                      PROMPT\n\n"
          "Text from the model as it is now, continuing PROMPT (\"\" for none).\n"
          "  --tokens N         1..1024 (default 200)\n"
          "  --temperature T    0..2, 0 is greedy (default 0.8)\n"
          "  --seed S           for repeatable text\n"
          "  --quant int8|int4  generate from a copy of the model quantized on the spot\n",
          ctl_sample },
        { "checkpoint",
          "Usage: edgectl checkpoint [list]\n"
          "       edgectl checkpoint save\n"
          "       edgectl checkpoint export FILE\n\n"
          "list: the saved checkpoints, newest first. save: saves one now. export: saves one\n"
          "and copies it to FILE (atomically); reading it needs root or group edged.\n",
          ctl_checkpoint },
        { "generate",
          "Usage: edgectl generate (--peers URL,URL,... | --fleet URL) [OPTIONS] PROMPT\n\n"
          "Text from one model run across several devices: the layers are split over the\n"
          "peers' stage servers ([Inference] Serve=yes) by their speed and memory, and a peer\n"
          "that disappears is replaced by re-planning over the others. The bearer token comes\n"
          "from $EDGED_TOKEN or --token-file FILE.\n"
          "  --peers URLS       stage servers, e.g. http://10.0.0.2:7878,http://10.0.0.3:7878\n"
          "  --fleet URL        ask the aggregator at URL for them (GET /v1/peers), as the\n"
          "                     enrolled device of --identity FILE (/var/lib/edged/identity)\n"
          "  --tokens N         1..4096 (default 200)\n"
          "  --temperature T    0..2, 0 is greedy (default 0.8)\n"
          "  --top-k K          0..256, 0 is no limit (default 40)\n"
          "  --seed S           for repeatable text (default 1)\n",
          ctl_generate },
};

static void usage(FILE *f) {
        fprintf(f,
                "Usage: edgectl [OPTIONS] COMMAND [ARGS]\n"
                "\n"
                "Controls edged, which trains a small language model in spare CPU time.\n"
                "\n"
                "Commands:\n"
                "  status                          state, reason, throughput, loss, sensors\n"
                "  pause [--for DURATION]          pause training (30s, 10m, 2h, 1h30m)\n"
                "  resume                          end a user pause\n"
                "  profile [NAME]                  show or set quiet, balanced, performance\n"
                "  policy [show|set K=V...|reset [K]]  knobs and runtime overrides\n"
                "  stats [--since TIME]            time per state and reason, counts\n"
                "  watch [--count N]               live view, refreshed every second\n"
                "  sample [OPTIONS] PROMPT         text from the current model\n"
                "  checkpoint [list|save|export FILE]\n"
                "  generate --peers URLS PROMPT    text from a model split across devices\n"
                "\n"
                "Options:\n"
                "  --json          machine-readable output (docs/control-protocol.md)\n"
                "  --socket PATH   control socket (default %s)\n"
                "  --no-pager      accepted; edgectl never pages\n"
                "  -h, --help      this help; 'edgectl COMMAND --help' for one command\n"
                "  --version       show the version\n"
                "\n"
                "Exit status: 0 ok, 1 failure, 2 usage error, 3 edged not running,\n"
                "4 permission denied (root or group edged).\n",
                CONTROL_DEFAULT_PATH);
}

static bool want_color(void) {
        const char *nc = getenv("NO_COLOR"), *term = getenv("TERM");
        return isatty(STDOUT_FILENO) && !(nc && *nc) && !(term && strcmp(term, "dumb") == 0);
}

int main(int argc, char **argv) {
        static const struct option opts[] = { CTL_GLOBAL_OPTIONS, {} };
        ctl_context c = { .socket_path = CONTROL_DEFAULT_PATH };
        const ctl_verb *v = NULL;
        bool help = false;
        int opt, r;

        /* LC_CTYPE only: numbers in JSON and tables keep a decimal point */
        setlocale(LC_CTYPE, "");
        c.stdout_tty = isatty(STDOUT_FILENO);
        c.style = (ctl_style){ .color = want_color(),
                               .utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0,
                               .now = time(NULL) };

        /* "+": stop at the subcommand; its own parser takes the rest */
        while ((opt = getopt_long(argc, argv, "+h", opts, NULL)) >= 0) {
                if (opt == 'h') {
                        help = true;
                        continue;
                }
                if ((r = ctl_global_option(&c, NULL, opt, optarg)) != CTL_CONTINUE)
                        return r;
        }
        if (help) {
                usage(stdout);
                return CTL_EXIT_OK;
        }
        if (optind >= argc) {
                usage(stderr);
                return CTL_EXIT_USAGE;
        }
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
                if (strcmp(verbs[i].name, argv[optind]) == 0)
                        v = &verbs[i];
        if (!v) {
                ctl_usage_error(NULL, "unknown command '%s'", argv[optind]);
                return CTL_EXIT_USAGE;
        }
        r = v->run(&c, v, argc - optind, argv + optind);
        ctl_context_done(&c);
        return r;
}
