// SHA-256 against the FIPS 180-4 example digests and across update boundaries.
#include "server/common/sha256.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/test_models.h"

namespace deltaserve::common {
namespace {

TEST(Sha256Test, MatchesTheStandardsExamples) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, PiecewiseUpdatesAndFilesAgree) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data += static_cast<char>(i * 7);
  Sha256 hash;
  for (size_t start = 0; start < data.size(); start += 37) hash.Update(std::string_view(data).substr(start, 37));
  const std::string whole = Sha256Hex(data);
  EXPECT_EQ(hash.HexDigest(), whole);
  const std::string path = testing::MakeTempDir("sha256") + "/file";
  std::ofstream(path, std::ios::binary) << data;
  auto from_file = Sha256OfFile(path);
  ASSERT_TRUE(from_file.ok());
  EXPECT_EQ(*from_file, whole);
  EXPECT_EQ(Sha256OfFile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
  std::ofstream(path + ".empty").close();
  auto empty = Sha256OfFile(path + ".empty");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(*empty, Sha256Hex(""));
}

}  // namespace
}  // namespace deltaserve::common
