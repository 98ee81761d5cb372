/* log.c: where cltfs's log lines go.
 *
 * A line for the user (a chunk that failed its checksum, a Hub request
 * that gave up) is written by whichever layer noticed, but where it goes
 * is the process's choice: stderr for a command or a mount in the
 * foreground, syslog once a mount has daemonized (its stderr is then
 * /dev/null), or a function of the host's.  Keeping the choice here, not in
 * the FUSE adapter, lets every library of cltfs log without linking FUSE.
 */
#include "codec.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static cltfs_log_fn sink;   /* guarded by log_mu; NULL: stderr */
static void *sink_arg;      /* guarded by log_mu */

static void to_syslog(void *arg, const char *line)
{
	syslog(LOG_ERR, "%s", line);
}

void cltfs_log_set(cltfs_log_fn fn, void *arg)
{
	pthread_mutex_lock(&log_mu);
	sink = fn;
	sink_arg = arg;
	pthread_mutex_unlock(&log_mu);
}

void cltfs_log_to_syslog(void)
{
	openlog("cltfs", LOG_PID, LOG_DAEMON);
	cltfs_log_set(to_syslog, NULL);
}

void cltfs_log(const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	/* One line at a time: lines of threads that fail together stay whole. */
	pthread_mutex_lock(&log_mu);
	if (sink)
		sink(sink_arg, line);
	else
		fprintf(stderr, "cltfs: %s\n", line);
	pthread_mutex_unlock(&log_mu);
}
