/* Where an s3:// URL's objects are and how its requests are signed, as the
 * AWS CLI reads its environment and files: endpoints, path-style and
 * virtual-hosted addressing, regions, credentials and their precedence,
 * and URLs that are refused.  Everything that needs no server; the rest
 * runs against s3rver in tests/test_s3.py. */
#include "s3.h"
#include "unit.h"

#include <unistd.h>

static char home[64];

static void clear_env(void)
{
	const char *vars[] = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
			      "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
			      "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
			      "CLTFS_S3_ADDRESSING", "XDG_CACHE_HOME"};
	for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
		unsetenv(vars[i]);
	setenv("HOME", home, 1);
}

/* s3_open(url)'s base URL is want (NULL: it fails with err). */
static void check_base(const char *url, const char *want, cltfs_err err)
{
	s3_target *t = NULL;
	cltfs_err e = s3_open(url, &t);
	CHECK(e == (want ? CLTFS_OK : err));
	if (!e && want && strcmp(s3_base(t), want))
		fprintf(stderr, "  %s: base %s, want %s\n", url, s3_base(t), want);
	CHECK(!want || (t && !strcmp(s3_base(t), want)));
	s3_close(t);
}

static void test_addressing(void)
{
	clear_env();
	setenv("AWS_REGION", "eu-west-3", 1);
	/* AWS: virtual-hosted, path-style for a bucket with dots */
	check_base("s3://my-bucket/runs/acts/", "https://my-bucket.s3.eu-west-3.amazonaws.com/runs/acts/", 0);
	check_base("s3://my.bucket/p", "https://s3.eu-west-3.amazonaws.com/my.bucket/p/", 0);
	check_base("s3://my-bucket", "https://my-bucket.s3.eu-west-3.amazonaws.com/", 0);
	/* an endpoint URL: path-style, unless asked */
	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/", 1);
	check_base("s3://my-bucket/p", "http://127.0.0.1:9000/my-bucket/p/", 0);
	setenv("AWS_ENDPOINT_URL_S3", "https://minio.lan:9000", 1); /* the S3 one wins */
	check_base("s3://my-bucket/p", "https://minio.lan:9000/my-bucket/p/", 0);
	setenv("CLTFS_S3_ADDRESSING", "virtual", 1);
	check_base("s3://my-bucket/p", "https://my-bucket.minio.lan:9000/p/", 0);
	setenv("CLTFS_S3_ADDRESSING", "sideways", 1);
	check_base("s3://my-bucket/p", NULL, CLTFS_E_INVAL);
	unsetenv("CLTFS_S3_ADDRESSING");
	setenv("AWS_ENDPOINT_URL_S3", "ftp://x", 1);
	check_base("s3://my-bucket/p", NULL, CLTFS_E_INVAL);
	setenv("AWS_ENDPOINT_URL_S3", "http://host/path", 1);
	check_base("s3://my-bucket/p", NULL, CLTFS_E_INVAL);
	/* URLs that are not an S3 prefix cltfs will use */
	clear_env();
	const char *bad[] = {"s3://", "s3://ab", "s3://Upper/x", "s3://b_c/x", "s3://bucket/a/../b", "s3://bucket//a"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		check_base(bad[i], NULL, CLTFS_E_INVAL);
		/* "URL: cause", the URL named once */
		const char *m = cltfs_errmsg();
		size_t n = strlen(bad[i]);
		CHECK(!strncmp(m, bad[i], n) && !strncmp(m + n, ": ", 2) && strncmp(m + n + 2, bad[i], n));
	}
	CHECK(s3_is_url("s3://b") && !s3_is_url("hf://b") && hf_is_remote_url("s3://b") && hf_is_remote_url("hf://a/b"));
}

static void test_names(void)
{
	clear_env();
	setenv("XDG_CACHE_HOME", "/xdg", 1);
	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000", 1);
	s3_target *t = NULL;
	CHECK(s3_open("s3://bucket/a/b/", &t) == CLTFS_OK);
	if (t) {
		CHECK(!strcmp(s3_name(t), "s3://bucket/a/b"));
		CHECK(!strcmp(s3_cache(t), "/xdg/cltfs/s3/127.0.0.1_9000/bucket/a/b"));
		CHECK(!strcmp(s3_aws(t)->sigv4, "aws:amz:us-east-1:s3"));
		CHECK(s3_aws(t)->userpwd == NULL && strstr(s3_aws(t)->source, "unsigned"));
	}
	s3_close(t);
}

static void test_credentials(void)
{
	clear_env();
	char creds[128], conf[128];
	snprintf(creds, sizeof creds, "%s/credentials", home);
	snprintf(conf, sizeof conf, "%s/config", home);
	unit_write_file(creds, "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = dsecret\n"
			  "# a comment\n[work]\n  aws_access_key_id=AKIAWORK \naws_secret_access_key = w/secret+1\n"
			  "aws_session_token = tok==\n");
	unit_write_file(conf, "[default]\nregion = us-west-2\n[profile work]\nregion = ap-south-1\n"
			 "endpoint_url = http://10.0.0.1:9000\n");
	setenv("AWS_SHARED_CREDENTIALS_FILE", creds, 1);
	setenv("AWS_CONFIG_FILE", conf, 1);
	s3_target *t = NULL;
	CHECK(s3_open("s3://bucket/p", &t) == CLTFS_OK); /* the default profile */
	if (t) {
		CHECK(!strcmp(s3_aws(t)->userpwd, "AKIADEFAULT:dsecret") && !s3_aws(t)->token);
		CHECK(!strcmp(s3_aws(t)->sigv4, "aws:amz:us-west-2:s3"));
		CHECK(strstr(s3_aws(t)->source, "profile 'default'") && !strstr(s3_aws(t)->source, "dsecret"));
	}
	s3_close(t);
	setenv("AWS_PROFILE", "work", 1);
	CHECK(s3_open("s3://bucket/p", &t) == CLTFS_OK);
	if (t) {
		CHECK(!strcmp(s3_aws(t)->userpwd, "AKIAWORK:w/secret+1") && !strcmp(s3_aws(t)->token, "tok=="));
		CHECK(!strcmp(s3_aws(t)->sigv4, "aws:amz:ap-south-1:s3"));
		CHECK(!strcmp(s3_base(t), "http://10.0.0.1:9000/bucket/p/"));
		CHECK(strstr(s3_aws(t)->source, creds) != NULL);
	}
	s3_close(t);
	/* the environment's keys and region before the profile's, as the CLI */
	setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "esecret", 1);
	setenv("AWS_DEFAULT_REGION", "eu-north-1", 1);
	CHECK(s3_open("s3://bucket/p", &t) == CLTFS_OK);
	if (t) {
		CHECK(!strcmp(s3_aws(t)->userpwd, "AKIAENV:esecret") && !s3_aws(t)->token);
		CHECK(!strcmp(s3_aws(t)->sigv4, "aws:amz:eu-north-1:s3"));
		CHECK(strstr(s3_aws(t)->source, "environment") && !strstr(s3_aws(t)->source, "esecret"));
	}
	s3_close(t);
	setenv("AWS_REGION", "bad/region", 1);
	CHECK(s3_open("s3://bucket/p", &t) == CLTFS_E_INVAL);
}

int main(void)
{
	snprintf(home, sizeof home, "/tmp/cltfs-s3-XXXXXX");
	if (!mkdtemp(home))
		return 1;
	RUN(test_addressing);
	RUN(test_names);
	RUN(test_credentials);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", home);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", home);
	return unit_done("s3_config");
}
