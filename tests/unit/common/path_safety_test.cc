// ResolveUnderRoots against real directories and symlinks made here.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "server/common/path_safety.h"
#include "tests/support/test_models.h"

namespace deltaserve::common {
namespace {

class PathSafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::MakeTempDir("paths");
    root_ = base_ + "/root";
    outside_ = base_ + "/outside";
    ::mkdir(root_.c_str(), 0755);
    ::mkdir((root_ + "/adapter").c_str(), 0755);
    ::mkdir(outside_.c_str(), 0755);
    ::mkdir((outside_ + "/secret").c_str(), 0755);
    ASSERT_EQ(::symlink((outside_ + "/secret").c_str(), (root_ + "/escape").c_str()), 0);
    ASSERT_EQ(::symlink((root_ + "/adapter").c_str(), (root_ + "/alias").c_str()), 0);
  }
  std::string base_, root_, outside_;
};

TEST_F(PathSafetyTest, AcceptsPathsInsideARoot) {
  auto absolute = ResolveUnderRoots(root_ + "/adapter", {root_});
  ASSERT_TRUE(absolute.ok()) << absolute.status();
  EXPECT_EQ(*absolute, root_ + "/adapter");
  auto relative = ResolveUnderRoots("adapter", {outside_, root_});
  ASSERT_TRUE(relative.ok()) << relative.status();
  EXPECT_EQ(*relative, root_ + "/adapter");
  auto alias = ResolveUnderRoots("alias", {root_});  // a symlink that stays inside
  ASSERT_TRUE(alias.ok());
  EXPECT_EQ(*alias, root_ + "/adapter");
}

TEST_F(PathSafetyTest, RefusesDotDot) {
  auto status = ResolveUnderRoots(root_ + "/adapter/../adapter", {root_}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderRoots("../outside/secret", {root_}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PathSafetyTest, RefusesAbsolutePathsOutside) {
  auto status = ResolveUnderRoots(outside_ + "/secret", {root_}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_EQ(ResolveUnderRoots("/etc", {root_}).status().code(), absl::StatusCode::kPermissionDenied);
  // A sibling whose name merely starts with the root's.
  ::mkdir((root_ + "-evil").c_str(), 0755);
  EXPECT_EQ(ResolveUnderRoots(root_ + "-evil", {root_}).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(PathSafetyTest, RefusesSymlinkEscapes) {
  auto status = ResolveUnderRoots("escape", {root_}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_EQ(ResolveUnderRoots(root_ + "/escape", {root_}).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(PathSafetyTest, ExplainsMissingPathsAndRoots) {
  EXPECT_EQ(ResolveUnderRoots("missing", {root_}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolveUnderRoots("adapter", {}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ResolveUnderRoots("", {root_}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve::common
