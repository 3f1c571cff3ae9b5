// The /metrics parser against hand-written expositions that follow (or break)
// the text format specification.
#include "tests/testing/metrics_text.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

constexpr char kGood[] =
    "# HELP requests_total Requests by code.\n"
    "# TYPE requests_total counter\n"
    "requests_total{code=\"OK\"} 3\n"
    "requests_total{code=\"INVALID_ARGUMENT\",method=\"Generate\"} 1e0\n"
    "# a free comment\n"
    "\n"
    "# TYPE queue gauge\n"
    "queue 2 1700000000000\n"
    "# TYPE lat_ms histogram\n"
    "lat_ms_bucket{le=\"1\"} 0\n"
    "lat_ms_bucket{le=\"10\"} 2\n"
    "lat_ms_bucket{le=\"+Inf\"} 3\n"
    "lat_ms_sum 27.5\n"
    "lat_ms_count 3\n"
    "# TYPE odd summary\n"
    "odd{quantile=\"0.5\"} Nan\n"
    "odd_sum 0\n"
    "odd_count 0\n"
    "escaped{text=\"a\\\"b\\\\c\\nd\",} -Inf\n";

TEST(ParseMetricsTextTest, ReadsEveryKindOfLine) {
  absl::StatusOr<MetricsText> parsed = ParseMetricsText(kGood);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->types.at("requests_total"), "counter");
  EXPECT_EQ(parsed->types.at("lat_ms"), "histogram");
  EXPECT_EQ(parsed->helps.at("requests_total"), "Requests by code.");
  EXPECT_EQ(*parsed->Value("requests_total", {{"code", "OK"}}), 3);
  EXPECT_EQ(*parsed->Value("requests_total", {{"code", "INVALID_ARGUMENT"}, {"method", "Generate"}}),
            1);
  EXPECT_EQ(parsed->Sum("requests_total"), 4);
  EXPECT_EQ(*parsed->Value("queue"), 2);
  EXPECT_EQ(*parsed->Value("lat_ms_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_EQ(*parsed->Value("lat_ms_sum"), 27.5);
  EXPECT_TRUE(std::isnan(*parsed->Value("odd", {{"quantile", "0.5"}})));
  EXPECT_EQ(*parsed->Value("escaped", {{"text", "a\"b\\c\nd"}}), -INFINITY);
  EXPECT_FALSE(parsed->Value("requests_total").ok());
  EXPECT_EQ(parsed->ValueOrZero("requests_total", {{"code", "CANCELLED"}}), 0);
}

TEST(ParseMetricsTextTest, RejectsMalformedLines) {
  const std::string bad[] = {
      "1abc 3\n",                              // name starts with a digit
      "abc\n",                                 // no value
      "abc three\n",                           // value not a number
      "abc{code=OK} 1\n",                      // unquoted label value
      "abc{code=\"OK} 1\n",                    // unterminated value
      "abc{co-de=\"OK\"} 1\n",                 // bad label name
      "abc{a=\"1\",a=\"2\"} 1\n",              // label twice
      "abc{a=\"\\t\"} 1\n",                    // unknown escape
      "abc 1 2 3\n",                           // too many fields
      "# TYPE abc countr\nabc 1\n",            // unknown type
      "abc 1\n# TYPE abc counter\n",           // TYPE after samples
      "# TYPE abc counter\n# TYPE abc counter\n",  // TYPE twice
  };
  for (const std::string& text : bad) {
    absl::StatusOr<MetricsText> parsed = ParseMetricsText(text);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(parsed.status().message(), HasSubstr("metrics line")) << text;
  }
}

TEST(ParseMetricsTextTest, ChecksHistogramShape) {
  const std::string not_cumulative =
      "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n"
      "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n";
  EXPECT_FALSE(ParseMetricsText(not_cumulative).ok());
  const std::string count_differs =
      "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n";
  EXPECT_FALSE(ParseMetricsText(count_differs).ok());
  const std::string no_le = "# TYPE h histogram\nh_bucket 1\n";
  EXPECT_FALSE(ParseMetricsText(no_le).ok());
  const std::string bare = "# TYPE h histogram\nh 1\n";
  EXPECT_FALSE(ParseMetricsText(bare).ok());
  const std::string per_label =
      "# TYPE h histogram\n"
      "h_bucket{code=\"a\",le=\"1\"} 1\nh_bucket{code=\"a\",le=\"+Inf\"} 1\n"
      "h_bucket{code=\"b\",le=\"1\"} 0\nh_bucket{code=\"b\",le=\"+Inf\"} 4\n"
      "h_sum{code=\"a\"} 1\nh_count{code=\"a\"} 1\nh_sum{code=\"b\"} 9\nh_count{code=\"b\"} 4\n";
  EXPECT_TRUE(ParseMetricsText(per_label).ok()) << ParseMetricsText(per_label).status();
}

}  // namespace
}  // namespace pdserve
