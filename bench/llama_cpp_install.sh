# Sourced by the llama.cpp comparisons (run_llama_cpp.sh, run_prefill_vs_llama_cpp.sh):
#   install_node_llama_cpp DIR SCRIPT.mjs
# installs node-llama-cpp's prebuilt CPU binaries from the npm registry into DIR (a temporary
# folder, never the repository) and copies SCRIPT.mjs there to run with node. One pinned version
# for every comparison.
install_node_llama_cpp() {
  local dir=$1 script=$2
  echo "== installing node-llama-cpp (npm registry) into $dir"
  cp "$script" "$dir/"
  (cd "$dir" && echo '{"name": "llama-cpp-bench", "private": true, "type": "module"}' > package.json &&
    NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund --omit=optional --loglevel=error \
      node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 > /dev/null)
}
