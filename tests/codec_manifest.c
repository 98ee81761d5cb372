/* Manifest parsing, validation messages, derived chunk geometry. */
#include "codec.h"
#include "unit.h"

static const char *good =
	"{\"format\":\"cltfs\",\"version\":1,\"model\":{\"id\":\"m\",\"n_layers\":4,\"d_model\":8},"
	"\"dtype\":\"bfloat16\",\"n_targets\":2,\"chunk_rows\":4,\"x_layers\":[0,1,2],"
	"\"mlp_layers\":[1,2,3],\"samples\":[{\"rows\":5},{\"rows\":3},{\"rows\":9}],"
	"\"batches\":[[2,5],[1,9]]}";

static void test_good(void)
{
	cltfs_manifest *m;
	CHECK(cltfs_manifest_parse(good, strlen(good), "cltfs.json", &m) == CLTFS_OK);
	if (!m)
		return;
	CHECK(m->n_layers == 4 && m->d_model == 8 && m->dtype == CLTFS_BF16 && m->target_offset == 1);
	CHECK(m->total_rows == 17 && m->n_batches == 2 && m->batches[0].rows == 8 && m->batches[1].first_row == 8);
	/* chunks split at chunk_rows and at each batch end, never across */
	CHECK(m->n_chunks == 5);
	int64_t want[] = {0, 4, 8, 12, 16, 17};
	for (int i = 0; i <= 5; i++)
		CHECK(m->chunk_start[i] == want[i]);
	CHECK(cltfs_manifest_chunk_of(m, 0) == 0 && cltfs_manifest_chunk_of(m, 7) == 1 &&
	      cltfs_manifest_chunk_of(m, 8) == 2 && cltfs_manifest_chunk_of(m, 16) == 4);
	CHECK(cltfs_manifest_target_layer(m, 2, 0) == 3 && cltfs_manifest_target_layer(m, 2, 1) == -1);
	CHECK(cltfs_manifest_targets_of(m, 2) == 2);
	/* dump and parse again: the same text */
	char *a = cltfs_manifest_dump(m);
	cltfs_manifest *m2;
	CHECK(a && cltfs_manifest_parse(a, strlen(a), "again", &m2) == CLTFS_OK);
	char *b = m2 ? cltfs_manifest_dump(m2) : NULL;
	CHECK(a && b && !strcmp(a, b));
	free(a);
	free(b);
	cltfs_manifest_free(m2);
	cltfs_manifest_free(m);
}

/* Replace the first `from` in good by `to` and expect a message with `why`. */
static void refuse(const char *from, const char *to, const char *why)
{
	char buf[2048];
	const char *at = strstr(good, from);
	CHECK(at != NULL);
	if (!at)
		return;
	snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - good), good, to, at + strlen(from));
	cltfs_manifest *m = NULL;
	cltfs_err e = cltfs_manifest_parse(buf, strlen(buf), "/s/cltfs.json", &m);
	CHECK(e == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "/s/cltfs.json") != NULL);
	if (!strstr(cltfs_errmsg(), why)) {
		fprintf(stderr, "  message was: %s (wanted %s)\n", cltfs_errmsg(), why);
		CHECK(0);
	}
	cltfs_manifest_free(m);
}

static void test_refused(void)
{
	cltfs_manifest *m = NULL;
	CHECK(cltfs_manifest_parse("[1, 2]", 6, "/s/cltfs.json", &m) == CLTFS_E_FORMAT);
	CHECK(strstr(cltfs_errmsg(), "expected a JSON object") != NULL);
	refuse("\"version\":1", "\"version\":\"1\"", "'version': expected an integer");
	refuse("\"version\":1", "\"version\":2", "format version 1 only");
	refuse("\"format\":\"cltfs\"", "\"format\":\"zip\"", "not a cltfs manifest");
	refuse("\"dtype\":\"bfloat16\"", "\"dtype\":\"int8\"", "'dtype': unknown value");
	refuse("\"d_model\":8", "\"d_model\":0", "'d_model': 0 is out of range");
	refuse("\"chunk_rows\":4,", "", "'chunk_rows': missing");
	refuse("[0,1,2]", "[0,2,1]", "strictly ascending");
	refuse("[1,2,3]", "[1,2]", "mlp_layers lacks");
	refuse("[[2,5],[1,9]]", "[[2,5],[2,9]]", "more samples");
	refuse("[[2,5],[1,9]]", "[[2,4],[1,9]]", "shorter than one of its samples");
	refuse("[[2,5],[1,9]]", "[[2,5]]", "batches hold 2 samples");
	refuse("{\"rows\":5}", "{\"rows\":-5}", "/s/cltfs.json: field 'samples[0].rows': -5 is out of range");
	refuse("{\"rows\":3}", "3", "field 'samples[1]': expected an object");
	refuse("\"x_layers\":[0,1,2]", "\"x_layers\":[0,1,7]", "not below n_layers");
	refuse("}", "", "not valid JSON");
}

int main(void)
{
	RUN(test_good);
	RUN(test_refused);
	return unit_done("codec_manifest");
}
