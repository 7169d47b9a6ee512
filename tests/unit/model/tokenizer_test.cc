// Tokenizers: a byte-level BPE fixture whose ids were worked out by hand, the demo model's
// SentencePiece tokenizer round trips, the loader's BOS/EOS resolution, and streaming UTF-8.
#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "server/model/byte_level_bpe_tokenizer.h"
#include "server/model/model_config.h"
#include "server/model/sentencepiece_tokenizer.h"
#include "server/model/tokenizer_loader.h"
#include "server/model/utf8_stream.h"
#include "tests/support/test_models.h"

namespace deltaserve::model {
namespace {

// "Ġ" is U+0120, the byte-level symbol of a space; "Ã©" are the symbols of é's bytes C3 A9.
constexpr char kBpeJson[] = R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 18, "content": "<|end|>", "special": true},
    {"id": 19, "content": "<|begin|>", "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|begin|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
  "decoder": {"type": "ByteLevel"},
  "model": {
    "type": "BPE",
    "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "w": 4, "r": 5, "d": 6, "Ġ": 7, "he": 8, "ll": 9,
              "llo": 10, "hello": 11, "Ġw": 12, "or": 13, "Ġwor": 14, "Ã": 15, "©": 16, "Ã©": 17},
    "merges": ["h e", "l l", "ll o", "he llo", "Ġ w", ["o", "r"], "Ġw or", "Ã ©"]
  }
})";

std::unique_ptr<ByteLevelBpeTokenizer> Fixture() {
  auto tokenizer = ByteLevelBpeTokenizer::Create(kBpeJson);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return std::move(*tokenizer);
}

TEST(ByteLevelBpeTest, EncodesAsWorkedOutByHand) {
  auto tokenizer = Fixture();
  // "hello": he (rank 0), ll (1), llo (2), hello (3).
  // " world": Ġw (4), or (5), Ġwor (6); "l" and "d" have no merge.
  EXPECT_EQ(*tokenizer->Encode("hello world"), std::vector<int32_t>({11, 14, 2, 6}));
  EXPECT_EQ(*tokenizer->Encode("hell"), std::vector<int32_t>({8, 9}));
  EXPECT_EQ(*tokenizer->Encode("é"), std::vector<int32_t>({17}));
  EXPECT_EQ(*tokenizer->Encode("hello<|end|>"), std::vector<int32_t>({11, 18}));
  EXPECT_EQ(*tokenizer->Encode("<|begin|>he"), std::vector<int32_t>({19, 8}));
}

TEST(ByteLevelBpeTest, DecodesBytesAndSkipsSpecialTokens) {
  auto tokenizer = Fixture();
  EXPECT_EQ(tokenizer->Decode({11, 14, 2, 6, 18}), "hello world");
  EXPECT_EQ(tokenizer->TokenBytes(15), "\xC3");
  EXPECT_EQ(tokenizer->TokenBytes(16), "\xA9");
  EXPECT_EQ(tokenizer->Decode({15, 16}), "é");
  EXPECT_EQ(tokenizer->Decode({16}), "\xEF\xBF\xBD");  // a lone continuation byte
}

TEST(ByteLevelBpeTest, RejectsUnsupportedOrBrokenFiles) {
  EXPECT_FALSE(ByteLevelBpeTokenizer::Create("{").ok());
  EXPECT_FALSE(ByteLevelBpeTokenizer::Create(R"({"model": {"type": "Unigram", "vocab": []}})").ok());
  auto metaspace = ByteLevelBpeTokenizer::Create(
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}})");
  ASSERT_FALSE(metaspace.ok());
  EXPECT_NE(metaspace.status().message().find("tokenizer.model"), std::string::npos);
  auto tokenizer = Fixture();
  EXPECT_EQ(tokenizer->Encode("\xFF").status().code(), absl::StatusCode::kInvalidArgument);
}

// Inputs the fuzzer found (tests/fuzz/regressions/tokenizer_json): a value of the wrong type
// used to throw out of the loader, and a Split without a pattern read past the end of a JSON
// object; now each is refused, as are nesting and ids beyond any real tokenizer's.
TEST(ByteLevelBpeTest, FilesThatOnceCrashedAreRefused) {
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  struct Case {
    std::string json;
    std::string words;
  };
  const std::vector<Case> cases = {
      {"{" + model + R"(, "pre_tokenizer": {"type": false})}", "wrong type"},
      {"{" + model + R"(, "pre_tokenizer": {"type": "Split", "patt[rn": {"Regex": "a"}})}", "Split pre-tokenizer without a pattern"},
      {"{" + model + R"(, "pre_tokenizer": {"type": "Sequence"})}", "Sequence pre-tokenizer without a list"},
      {"{" + model + R"(, "x": )" + std::string(1000, '[') + std::string(1000, ']') + "}", "nested too deeply"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 1073741823}, "merges": []}})", "has an invalid id"},
  };
  for (const Case& test : cases) {
    auto tokenizer = ByteLevelBpeTokenizer::Create(test.json);
    ASSERT_FALSE(tokenizer.ok()) << test.json.substr(0, 200);
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(tokenizer.status().message().find(test.words), std::string::npos) << tokenizer.status();
  }
}

TEST(ByteLevelBpeTest, IgnoreMergesTakesWholeWords) {
  std::string json = kBpeJson;
  json.replace(json.find("\"type\": \"BPE\","), 14, "\"type\": \"BPE\", \"ignore_merges\": true,");
  auto tokenizer = ByteLevelBpeTokenizer::Create(json);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(*(*tokenizer)->Encode("hello"), std::vector<int32_t>({11}));
}

// Llama 3's pre-tokenizer: a Split with its regex (digits in groups of at most three), then
// ByteLevel without its own regex. Merge "3 4" has the best rank, so without the split
// "12345" would become [12, 34, 5]; split into "123" and "45" it becomes [123, 45].
constexpr char kLlama3Json[] = R"({
  "added_tokens": [],
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
  "model": {"type": "BPE", "ignore_merges": true,
    "vocab": {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "12": 5, "123": 6, "34": 7, "45": 8,
              "I": 9, "'": 10, "M": 11, "'M": 12},
    "merges": ["3 4", "1 2", "12 3", "4 5", "' M"]}
})";

TEST(ByteLevelBpeTest, Llama3PreTokenizerSplitsDigitsInThrees) {
  auto tokenizer = ByteLevelBpeTokenizer::Create(kLlama3Json);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(*(*tokenizer)->Encode("12345"), std::vector<int32_t>({6, 8}));
  // (?i:...) matches the contraction case-insensitively: "I'M" -> "I", "'M".
  EXPECT_EQ(*(*tokenizer)->Encode("I'M"), std::vector<int32_t>({9, 12}));
}

TEST(TokenizerLoaderTest, ByteLevelBosComesFromThePostProcessor) {
  std::string directory = testing::MakeTempDir("bpe");
  ASSERT_TRUE(common::WriteFileAtomically(common::JoinPath(directory, "tokenizer.json"), kBpeJson).ok());
  ASSERT_TRUE(common::WriteFileAtomically(common::JoinPath(directory, "tokenizer_config.json"),
                                          R"({"bos_token": "<|begin|>", "eos_token": "<|end|>"})")
                  .ok());
  ModelConfig config;
  config.vocab_size = 20;
  auto tokenizer = LoadTokenizer(directory, config);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_TRUE((*tokenizer)->special_tokens().add_bos);
  EXPECT_EQ((*tokenizer)->special_tokens().bos_id, 19);
  EXPECT_TRUE((*tokenizer)->IsEos(18));
  EXPECT_EQ(*(*tokenizer)->EncodePrompt("hell"), std::vector<int32_t>({19, 8, 9}));
  config.vocab_size = 10;
  EXPECT_FALSE(LoadTokenizer(directory, config).ok());  // tokenizer larger than the model
}

TEST(SentencePieceTest, DemoTokenizerRoundTrips) {
  const std::string& directory = testing::TinyModelDir();
  auto config = ModelConfig::FromFile(common::JoinPath(directory, "config.json"));
  ASSERT_TRUE(config.ok());
  auto tokenizer = LoadTokenizer(directory, *config);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->special_tokens().bos_id, 1);
  EXPECT_TRUE((*tokenizer)->IsEos(2));
  for (const std::string text : {"the cat reads a long letter", "naïve café 你好 🙂 Привет", "x y z 42"}) {
    auto ids = (*tokenizer)->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_FALSE(ids->empty());
    // SentencePiece marks the start of the text with a space ("▁"): decoding keeps it.
    EXPECT_EQ((*tokenizer)->Decode(*ids), " " + text) << text;
  }
  // The demo tokenizer keeps SentencePiece's default normalisation: whitespace runs collapse.
  EXPECT_EQ((*tokenizer)->Decode(*(*tokenizer)->Encode("x  y\tz")), " x y z");
  auto prompt = (*tokenizer)->EncodePrompt("the cat");
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ((*prompt)[0], 1);
  EXPECT_EQ((*tokenizer)->TokenBytes(1), "");  // control tokens decode to nothing
}

TEST(SentencePieceTest, RareCharactersUseByteFallback) {
  const std::string& directory = testing::TinyModelDir();
  auto config = ModelConfig::FromFile(common::JoinPath(directory, "config.json"));
  auto tokenizer = LoadTokenizer(directory, *config);
  ASSERT_TRUE(tokenizer.ok());
  // A character absent from the training text becomes its UTF-8 bytes, one token each.
  auto ids = (*tokenizer)->Encode("龘");
  ASSERT_TRUE(ids.ok());
  std::string bytes;
  int single_byte_tokens = 0;
  for (int32_t id : *ids) {
    std::string piece = (*tokenizer)->TokenBytes(id);
    if (piece.size() == 1 && static_cast<unsigned char>(piece[0]) >= 0x80) ++single_byte_tokens;
    bytes += piece;
  }
  EXPECT_EQ(single_byte_tokens, 3);
  EXPECT_EQ(bytes, " 龘");
}

TEST(Utf8StreamTest, HoldsBackIncompleteCharacters) {
  const std::string text = "a你好🙂é";
  Utf8StreamDecoder decoder;
  std::string streamed;
  std::vector<std::string> pieces;
  for (char byte : text) {
    std::string piece = decoder.Append(std::string(1, byte));
    EXPECT_TRUE(IsValidUtf8(piece));
    if (!piece.empty()) pieces.push_back(piece);
    streamed += piece;
  }
  streamed += decoder.Flush();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(pieces, std::vector<std::string>({"a", "你", "好", "🙂", "é"}));
}

TEST(Utf8StreamTest, ReplacesInvalidBytes) {
  Utf8StreamDecoder decoder;
  EXPECT_EQ(decoder.Append("\xE4\xBD"), "");
  EXPECT_EQ(decoder.Append("x"), "\xEF\xBF\xBDx");  // the incomplete character was broken
  EXPECT_EQ(decoder.Append("\xFF"), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.Append("\xF0\x9F"), "");
  EXPECT_EQ(decoder.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
}

}  // namespace
}  // namespace deltaserve::model
