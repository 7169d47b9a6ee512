// VariantCatalog's names and its atomic replace: kept versions are addressed as "NAME@N" but
// cannot be created as new names, and Replace switches a name and registers the previous
// version in one step (or changes nothing).
#include "server/control/variant_catalog.h"

#include <gtest/gtest.h>

namespace deltaserve::control {
namespace {

std::shared_ptr<const Variant> Make(const std::string& name, int64_t version, uint64_t adapter_id) {
  auto variant = std::make_shared<Variant>();
  variant->name = name;
  variant->version = version;
  variant->adapter_id = adapter_id;
  return variant;
}

TEST(VariantCatalogTest, VersionNamesAreReferencesButNeverNewNames) {
  EXPECT_TRUE(VariantCatalog::ValidateName("team/bot").ok());
  EXPECT_FALSE(VariantCatalog::ValidateName("team/bot@1").ok());
  EXPECT_TRUE(VariantCatalog::ValidateReference("team/bot@1").ok());
  EXPECT_TRUE(VariantCatalog::ValidateReference("bot@12").ok());
  EXPECT_FALSE(VariantCatalog::ValidateReference("team/bot@0").ok());
  EXPECT_FALSE(VariantCatalog::ValidateReference("team/bot@x").ok());
  EXPECT_FALSE(VariantCatalog::ValidateReference("Team/bot@1").ok());
  EXPECT_EQ(VariantCatalog::VersionName("team/bot", 3), "team/bot@3");
  EXPECT_FALSE(VariantCatalog::ValidateReference("team/bot@1234567890123456789").ok()) << "19 digits";
  // A name of a megabyte (a gRPC message holds 4 MiB) once overflowed std::regex's recursion;
  // it is refused by its length, and not echoed whole.
  for (const std::string& huge : {std::string(1 << 20, 'a'), std::string(1 << 20, 'a') + "@1"}) {
    absl::Status status = VariantCatalog::ValidateReference(huge);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_LT(status.message().size(), 400u);
  }
}

TEST(VariantCatalogTest, ReplaceSwitchesTheNameAndKeepsThePreviousVersion) {
  VariantCatalog catalog;
  ASSERT_TRUE(catalog.Register(Make("team/bot", 1, 10)).ok());
  EXPECT_EQ(catalog.Replace(Make("team/none", 2, 11), nullptr).code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(catalog.Replace(Make("team/bot", 2, 11), Make("team/bot@1", 1, 10)).ok());
  EXPECT_EQ(catalog.Find("team/bot")->adapter_id, 11u);
  EXPECT_EQ(catalog.Find("team/bot")->version, 2);
  EXPECT_EQ(catalog.Find("team/bot@1")->adapter_id, 10u);

  // The previous name taken: nothing changes.
  EXPECT_EQ(catalog.Replace(Make("team/bot", 3, 12), Make("team/bot@1", 2, 11)).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(catalog.Find("team/bot")->version, 2);

  // Without a previous version the old one is simply gone from the catalog.
  ASSERT_TRUE(catalog.Replace(Make("team/bot", 3, 12), nullptr).ok());
  EXPECT_EQ(catalog.Find("team/bot")->adapter_id, 12u);
  EXPECT_EQ(catalog.List("team/", "", 10).size(), 2u);
}

}  // namespace
}  // namespace deltaserve::control
