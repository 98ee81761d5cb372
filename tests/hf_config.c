/* The Hub client's configuration (huggingface_hub's environment variables
 * and their precedence), hf:// URL parsing, offline revisions from refs/,
 * the listing's fields, and the partial downloads and blob checks of
 * share.c: everything that needs no server.  The rest runs against a real
 * HTTP server in tests/test_hub.py. */
#include "hfcache_internal.h"
#include "repo_internal.h"
#include "unit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static char home[64];

static void clear_env(void)
{
	const char *vars[] = {"HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME",
			      "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE",
			      "CLTFS_HUB_RETRIES", "CLTFS_HUB_BACKOFF_MS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
			      "SSL_CERT_FILE", "SSL_CERT_DIR"};
	for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
		unsetenv(vars[i]);
	setenv("HOME", home, 1);
}

static void test_defaults(void)
{
	clear_env();
	hf_config c;
	char want[256];
	CHECK(hf_config_from_env(&c) == CLTFS_OK);
	CHECK(!strcmp(c.endpoint, "https://huggingface.co"));
	snprintf(want, sizeof want, "%s/.cache/huggingface/hub", home);
	CHECK(!strcmp(c.hub_cache, want));
	CHECK(c.token == NULL && !c.offline && c.retries == 5 && c.backoff_ms == 500);
	hf_config_free(&c);

	setenv("XDG_CACHE_HOME", "/x", 1);
	CHECK(hf_config_from_env(&c) == CLTFS_OK);
	CHECK(!strcmp(c.hub_cache, "/x/huggingface/hub"));
	hf_config_free(&c);
}

static void test_precedence(void)
{
	clear_env();
	hf_config c;
	char path[256];
	setenv("HF_HOME", home, 1);
	snprintf(path, sizeof path, "%s/token", home);
	unit_write_file(path, "  hf_from_file\n");
	setenv("HF_ENDPOINT", "http://127.0.0.1:9/", 1);
	setenv("HF_HUB_OFFLINE", "yes", 1);
	setenv("CLTFS_HUB_RETRIES", "2", 1);
	CHECK(hf_config_from_env(&c) == CLTFS_OK);
	CHECK(!strcmp(c.endpoint, "http://127.0.0.1:9")); /* no trailing slash */
	CHECK(c.token && !strcmp(c.token, "hf_from_file"));
	CHECK(c.offline && c.retries == 2);
	snprintf(path, sizeof path, "%s/hub", home);
	CHECK(!strcmp(c.hub_cache, path));
	hf_config_free(&c);

	setenv("HF_TOKEN", "hf_env", 1); /* the environment wins over the file */
	setenv("HF_HUB_CACHE", "~/elsewhere", 1);
	setenv("HF_HUB_OFFLINE", "0", 1);
	setenv("CLTFS_HUB_RETRIES", "lots", 1); /* not a number: the default */
	CHECK(hf_config_from_env(&c) == CLTFS_OK);
	CHECK(c.token && !strcmp(c.token, "hf_env"));
	snprintf(path, sizeof path, "%s/elsewhere", home);
	CHECK(!strcmp(c.hub_cache, path));
	CHECK(!c.offline && c.retries == 5);
	hf_config_free(&c);
}

/* The CA certificates: requests' variables, then OpenSSL's; a name that
 * cannot be read refused, naming the variable. */
static void test_ca_bundle(void)
{
	clear_env();
	hf_config c;
	char a[256], b[256];
	snprintf(a, sizeof a, "%s/a.pem", home);
	snprintf(b, sizeof b, "%s/b.pem", home);
	unit_write_file(a, "a");
	unit_write_file(b, "b");
	CHECK(hf_config_from_env(&c) == CLTFS_OK && !c.ca_file && !c.ca_dir);
	hf_config_free(&c);
	setenv("SSL_CERT_FILE", b, 1);
	CHECK(hf_config_from_env(&c) == CLTFS_OK && c.ca_file && !strcmp(c.ca_file, b));
	hf_config_free(&c);
	setenv("CURL_CA_BUNDLE", a, 1);
	CHECK(hf_config_from_env(&c) == CLTFS_OK && c.ca_file && !strcmp(c.ca_file, a));
	hf_config_free(&c);
	setenv("REQUESTS_CA_BUNDLE", b, 1);
	setenv("SSL_CERT_DIR", home, 1);
	CHECK(hf_config_from_env(&c) == CLTFS_OK && c.ca_file && !strcmp(c.ca_file, b));
	CHECK(c.ca_dir && !strcmp(c.ca_dir, home));
	hf_config_free(&c);
	setenv("CURL_CA_BUNDLE", "/nonexistent/ca.pem", 1); /* requests' first wins: never looked at */
	CHECK(hf_config_from_env(&c) == CLTFS_OK);
	hf_config_free(&c);
	unsetenv("REQUESTS_CA_BUNDLE");
	CHECK(hf_config_from_env(&c) == CLTFS_E_INVAL);
	CHECK(strstr(cltfs_errmsg(), "CURL_CA_BUNDLE=/nonexistent/ca.pem") && strstr(cltfs_errmsg(), "No such file"));
	unsetenv("CURL_CA_BUNDLE");
	setenv("SSL_CERT_DIR", "/nonexistent", 1);
	CHECK(hf_config_from_env(&c) == CLTFS_E_INVAL && strstr(cltfs_errmsg(), "SSL_CERT_DIR=/nonexistent"));
	clear_env();
}

static void test_urls(void)
{
	clear_env();
	setenv("HF_HUB_OFFLINE", "1", 1); /* nothing here may reach a network */
	setenv("HF_HOME", home, 1);
	hf_config c;
	hf_repo *r = NULL;
	CHECK(hf_config_from_env(&c) == CLTFS_OK);
	CHECK(hf_is_url("hf://datasets/a/b") && !hf_is_url("/store") && !hf_is_url("hf:/x"));
	const char *bad[] = {"hf://datasets/onlyone", "hf://datasets/a/b/c", "hf://datasets//b", "hf://datasets/a/",
			     "hf://datasets/a b/c", "hf://datasets/a/b@../../x", "hf://spaces/a/b"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		cltfs_err e = hf_repo_open(&c, bad[i], &r);
		CHECK(e == CLTFS_E_INVAL || e == CLTFS_E_UNSUPPORTED);
		CHECK(strstr(cltfs_errmsg(), bad[i]) != NULL);
	}
	/* offline: a revision not in the cache names the variable and the file */
	CHECK(hf_repo_open(&c, "hf://datasets/me/acts", &r) == CLTFS_E_NOTFOUND);
	CHECK(strstr(cltfs_errmsg(), "HF_HUB_OFFLINE") && strstr(cltfs_errmsg(), "refs/main"));

	/* offline: refs/<branch> names the commit, as huggingface_hub writes it */
	char path[512];
	const char *commit = "0123456789abcdef0123456789abcdef01234567";
	snprintf(path, sizeof path, "%s/hub", home);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/hub/datasets--me--acts", home);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/hub/datasets--me--acts/refs", home);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/hub/datasets--me--acts/refs/main", home);
	unit_write_file(path, commit);
	CHECK(hf_repo_open(&c, "hf://datasets/me/acts", &r) == CLTFS_OK);
	if (r) {
		CHECK(!strcmp(hf_repo_commit(r), commit));
		CHECK(!strcmp(hf_repo_id(r), "datasets/me/acts"));
		snprintf(path, sizeof path, "%s/hub/datasets--me--acts", home);
		CHECK(!strcmp(hf_repo_folder(r), path));
		char *local = NULL;
		CHECK(hf_fetch(r, "cltfs.json", &local) == CLTFS_E_NOTFOUND); /* offline, not cached */
		CHECK(strstr(cltfs_errmsg(), "HF_HUB_OFFLINE") != NULL);
		CHECK(hf_fetch(r, "../escape", &local) == CLTFS_E_INVAL);
		uint8_t b[4];
		CHECK(hf_read_range(r, "packs/x.pack", 0, 4, b) == CLTFS_E_NOTFOUND);
		hf_repo_close(r);
	}
	/* hf://owner/name is a model, as huggingface_hub's HfFileSystem reads it */
	snprintf(path, sizeof path, "%s/hub/models--me--llava", home);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/hub/models--me--llava/refs", home);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/hub/models--me--llava/refs/main", home);
	unit_write_file(path, commit);
	const char *model_urls[] = {"hf://me/llava", "hf://models/me/llava"};
	for (int i = 0; i < 2; i++) {
		CHECK(hf_repo_open(&c, model_urls[i], &r) == CLTFS_OK);
		if (r) {
			CHECK(!strcmp(hf_repo_id(r), "models/me/llava"));
			snprintf(path, sizeof path, "%s/hub/models--me--llava", home);
			CHECK(!strcmp(hf_repo_folder(r), path));
			hf_repo_close(r);
		}
	}
	/* a garbage ref is an error that names the file */
	snprintf(path, sizeof path, "%s/hub/datasets--me--acts/refs/main", home);
	unit_write_file(path, "not a commit");
	CHECK(hf_repo_open(&c, "hf://datasets/me/acts", &r) == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "refs/main") != NULL);
	hf_config_free(&c);
}

/* What trees/<commit>.json needs of the Hub's listing. */
static void test_tree_fields(void)
{
	const char *page = "[{\"type\": \"file\", \"oid\": \"aa\", \"size\": 5, \"path\": \"a.txt\"},"
			   " {\"type\": \"file\", \"oid\": \"bb\", \"size\": 9000, \"path\": \"b.bin\","
			   "  \"lfs\": {\"oid\": \"cc\", \"size\": 9000, \"pointerSize\": 134}, \"xetHash\": \"dd\"},"
			   " {\"type\": \"directory\", \"oid\": \"ee\", \"size\": 0, \"path\": \"d\"}]";
	hf_entries l = {0};
	CHECK(hf_parse_tree_page(page, strlen(page), "t", &l) == CLTFS_OK && l.n == 3);
	CHECK(!strcmp(l.e[0].blob_id, "aa") && !l.e[0].lfs_sha256 && !l.e[0].xet_hash);
	CHECK(!strcmp(l.e[1].blob_id, "bb") && !strcmp(l.e[1].lfs_sha256, "cc") && !strcmp(l.e[1].xet_hash, "dd"));
	CHECK(l.e[1].size == 9000 && l.e[2].dir && !l.e[2].blob_id);
	hf_entries_free(l.e, l.n);
}

static void make_partial(const char *dir, const char *name, size_t n)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && ftruncate(fd, (off_t)n) == 0);
	close(fd);
}

static off_t size_of(const char *dir, const char *name)
{
	char path[512];
	struct stat st;
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* The partials of both namings: the longest that fits kept as
 * <etag>.incomplete, the others removed; other blobs' left alone. */
static void test_partials(void)
{
	char blobs[256];
	snprintf(blobs, sizeof blobs, "%s/blobs", home);
	CHECK(mkdir(blobs, 0755) == 0);
	make_partial(blobs, "e1.incomplete", 100);
	make_partial(blobs, "e1.0a1b2c3d.incomplete", 200);
	make_partial(blobs, "e1.99999999.incomplete", 5000); /* longer than the blob: not a prefix */
	make_partial(blobs, "e1", 7);                        /* not a partial */
	make_partial(blobs, "e1x.incomplete", 300);          /* another blob's */
	make_partial(blobs, "e2.ffffffff.incomplete", 300);
	CHECK(hf_partials_tidy(blobs, "e1", 1000, true) == CLTFS_OK);
	CHECK(size_of(blobs, "e1.incomplete") == 200 && size_of(blobs, "e1.0a1b2c3d.incomplete") < 0);
	CHECK(size_of(blobs, "e1.99999999.incomplete") < 0 && size_of(blobs, "e1") == 7);
	CHECK(size_of(blobs, "e1x.incomplete") == 300 && size_of(blobs, "e2.ffffffff.incomplete") == 300);
	CHECK(hf_partials_tidy(blobs, "e1", 1000, false) == CLTFS_OK);
	CHECK(size_of(blobs, "e1.incomplete") < 0 && size_of(blobs, "e1") == 7);
}

/* A blob against its name: sha256, git blob sha1, anything else unchecked. */
static void test_blob_check(void)
{
	char path[256];
	snprintf(path, sizeof path, "%s/blob", home);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, "hello\n", 6) == 6);
	/* sha256sum, and git hash-object, of "hello\n" */
	CHECK(hf_blob_check(fd, path, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", 6) == CLTFS_OK);
	CHECK(hf_blob_check(fd, path, "ce013625030ba8dba906f756967f9e9ca394464a", 6) == CLTFS_OK);
	CHECK(hf_blob_check(fd, path, "0000000000000000000000000000000000000000", 6) == CLTFS_E_CORRUPT);
	CHECK(strstr(cltfs_errmsg(), path) && strstr(cltfs_errmsg(), "ce013625030ba8dba906f756967f9e9ca394464a"));
	CHECK(hf_blob_check(fd, path, "\"an-opaque-etag\"", 6) == CLTFS_OK);
	close(fd);
}

int main(void)
{
	snprintf(home, sizeof home, "/tmp/cltfs-hf-XXXXXX");
	if (!mkdtemp(home))
		return 1;
	RUN(test_defaults);
	RUN(test_precedence);
	RUN(test_ca_bundle);
	RUN(test_urls);
	RUN(test_tree_fields);
	RUN(test_partials);
	RUN(test_blob_check);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", home);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", home);
	return unit_done("hf_config");
}
