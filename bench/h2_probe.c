/* h2_probe: n ranges of one file fetched at once on a libcurl multi handle,
 * as hfcache/ranges.c fetches a reader's spans, in one of two ways:
 *
 *   h2  HTTP/2 where offered, CURLOPT_PIPEWAIT, multiplexing on: libcurl
 *       puts every request on one connection (what ranges.c did)
 *   h1  HTTP/1.1, up to 8 connections to the host (what it does now)
 *
 * Usage: h2_probe URL CA_FILE h1|h2 N MIB.  Prints the seconds from the
 * first request to the last byte and the connections libcurl opened.  For
 * bench/h2_bench.py, which puts a link with round trips and a TCP window
 * in front of the server. */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t sink(char *p, size_t s, size_t n, void *u)
{
	(void)p;
	*(size_t *)u += s * n;
	return s * n;
}

int main(int argc, char **argv)
{
	if (argc != 6 || (strcmp(argv[3], "h1") && strcmp(argv[3], "h2"))) {
		fprintf(stderr, "usage: h2_probe URL CA_FILE h1|h2 N MIB\n");
		return 2;
	}
	bool h2 = !strcmp(argv[3], "h2");
	int n = atoi(argv[4]);
	long mib = atol(argv[5]);
	if (n < 1 || n > 64 || mib < 1) {
		fprintf(stderr, "h2_probe: N in 1..64, MIB >= 1\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	CURLM *m = curl_multi_init();
	curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)(h2 ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING));
	curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
	CURL *e[64];
	size_t got[64] = {0};
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++) {
		char r[64];
		snprintf(r, sizeof r, "%ld-%ld", (long)i * (mib << 20), (long)(i + 1) * (mib << 20) - 1);
		if (!(e[i] = curl_easy_init()))
			return 1;
		curl_easy_setopt(e[i], CURLOPT_URL, argv[1]);
		curl_easy_setopt(e[i], CURLOPT_CAINFO, argv[2]);
		curl_easy_setopt(e[i], CURLOPT_RANGE, r);
		curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, sink);
		curl_easy_setopt(e[i], CURLOPT_WRITEDATA, &got[i]);
		curl_easy_setopt(e[i], CURLOPT_HTTP_VERSION, h2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
		if (h2)
			curl_easy_setopt(e[i], CURLOPT_PIPEWAIT, 1L);
		curl_multi_add_handle(m, e[i]);
	}
	int running = 1;
	while (running) {
		curl_multi_perform(m, &running);
		curl_multi_poll(m, NULL, 0, 100, NULL);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long conns = 0;
	int bad = 0;
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(m, &left)))
		bad += msg->msg == CURLMSG_DONE && msg->data.result != CURLE_OK;
	for (int i = 0; i < n; i++) {
		long c = 0;
		curl_easy_getinfo(e[i], CURLINFO_NUM_CONNECTS, &c);
		conns += c;
		bad += got[i] != (size_t)mib << 20;
		curl_multi_remove_handle(m, e[i]);
		curl_easy_cleanup(e[i]);
	}
	curl_multi_cleanup(m);
	printf("%.3f %ld\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, conns);
	if (bad)
		fprintf(stderr, "h2_probe: %d ranges failed or came short\n", bad);
	return bad ? 1 : 0;
}
