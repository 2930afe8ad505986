// libFuzzer target for toptag's HDF5 readers, structure-aware: the input picks a valid file (a float
// checkpoint, an image file, a features file, a reference-format file) and a list of edits made
// with the HDF5 library: an attribute or dataset replaced by one of another type, rank, size or
// content (NaN, inf, negative, huge chunked dimensions), or an object deleted or linked elsewhere.
// The reader must then accept the file or throw toptag::Error; a crash, a sanitizer report or any
// other exception is a finding. (Mutating the raw bytes instead would mostly fuzz libhdf5's own
// parser, which is not ours to fix.)
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/image_file.h"
#include "nn/check.h"
#include "nn/parallel.h"
#include "tagger/inference.h"
#include "tagger/tagger.h"

namespace {

namespace fs = std::filesystem;
using namespace toptag;

struct Kind {
  std::string name;
  std::vector<std::string> objects;  // what the edits may touch
};

const std::vector<Kind>& kinds() {
  static const std::vector<Kind> k = {
      {"checkpoint",
       {"arch", "toptag_format", "folded_batchnorm", "images", "conv1.weight", "bn1.running_var", "bn1.weight",
        "fc1.weight", "fc2.bias", "layer1.0.conv1.weight", "training", "image_size"}},
      {"images", {"images", "labels", "preprocessing", "toptag_images", "extent"}},
      {"features", {"features", "labels", "source"}},
      {"reference", {"table/table", "table", "values_block_0_kind", "values_block_1_kind", "nrows", "CLASS"}},
  };
  return k;
}

fs::path directory() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("toptag_fuzz_hdf5_" + std::to_string(::getpid()));
    fs::create_directories(d);
    set_num_threads(1);
    Tagger t;
    t.model = std::make_unique<ResNet>(ResNetConfig{"resnet10", 1, 4, 16, 2}, 5);
    t.images.size = 16;
    save_tagger((d / "checkpoint.h5").string(), t);
    ImageWriter w((d / "images.h5").string(), t.images);
    Tensor images = Tensor::zeros({4, 1, 16, 16});
    images.data()[7] = 1.0f;
    w.append(images, {0, 1, 0, 1});
    w.close();
    write_features((d / "features.h5").string(), {Tensor::zeros({4, 16}), {0, 1, 1, 0}, ""}, "fuzz");
    fs::copy_file(TOPTAG_REFERENCE_SAMPLE, d / "reference.h5", fs::copy_options::overwrite_existing);
    return d;
  }();
  return dir;
}

// Writes `bytes` to `path`, retrying writes that libFuzzer's timer signal interrupts.
void write_file(const fs::path& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) __builtin_trap();
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) __builtin_trap();
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

// The template file of a kind, read once.
const std::string& template_bytes(const std::string& kind) {
  static std::map<std::string, std::string> cache;
  auto [it, fresh] = cache.try_emplace(kind);
  if (fresh) {
    std::ifstream in(directory() / (kind + ".h5"), std::ios::binary);
    it->second.assign(std::istreambuf_iterator<char>(in), {});
  }
  return it->second;
}

// Reads bytes from the input, zeros when it runs out.
struct Bytes {
  const uint8_t* data;
  size_t size, pos = 0;
  uint8_t next() { return pos < size ? data[pos++] : 0; }
};

hid_t element_type(uint8_t code) {
  switch (code % 6) {
    case 0:
      return H5Tcopy(H5T_NATIVE_FLOAT);
    case 1:
      return H5Tcopy(H5T_NATIVE_DOUBLE);
    case 2:
      return H5Tcopy(H5T_NATIVE_INT64);
    case 3:
      return H5Tcopy(H5T_NATIVE_INT8);
    case 4: {
      hid_t t = H5Tcopy(H5T_C_S1);
      H5Tset_size(t, 1 + code / 6 % 16);
      return t;
    }
    default: {
      hid_t t = H5Tcopy(H5T_C_S1);
      H5Tset_size(t, H5T_VARIABLE);
      return t;
    }
  }
}

// One edit of object `name` under `file`, described by the next bytes.
void edit(hid_t file, const std::string& name, Bytes& in) {
  const uint8_t op = in.next(), type_code = in.next(), rank = in.next() % 5, fill = in.next();
  // The attribute or dataset lives on the root, or on /table/table for reference attributes.
  const bool on_table = name.find("kind") != std::string::npos && H5Lexists(file, "table", H5P_DEFAULT) > 0 &&
                        H5Lexists(file, "table/table", H5P_DEFAULT) > 0;
  const hid_t owner = on_table ? H5Dopen2(file, "table/table", H5P_DEFAULT) : H5Gopen2(file, "/", H5P_DEFAULT);
  if (owner < 0) return;
  if (H5Aexists(owner, name.c_str()) > 0) H5Adelete(owner, name.c_str());
  if (op % 4 == 0) {  // delete (or never create) it
    if (H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(file, name.c_str(), H5P_DEFAULT);
  } else if (op % 4 == 3) {  // a link: to itself, to the root, or into another file
    if (H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(file, name.c_str(), H5P_DEFAULT);
    if (fill % 3 == 0) H5Lcreate_soft(("/" + name).c_str(), file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
    if (fill % 3 == 1) H5Lcreate_hard(file, "/", file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
    if (fill % 3 == 2) H5Lcreate_external("/nonexistent.h5", "/x", file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  } else {
    std::vector<hsize_t> dims(rank);
    bool huge = false;
    for (hsize_t& d : dims) {
      const uint8_t b = in.next();
      d = b & 0x80 ? hsize_t{1} << (b & 0x3f) : b % 9;  // small, or a forged huge extent (never written)
      huge = huge || d > 64;
    }
    hsize_t count = 1;
    for (hsize_t d : dims) count = huge ? 0 : count * d;
    const hid_t type = element_type(type_code);
    const hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims.data(), nullptr);
    const bool is_string = H5Tget_class(type) == H5T_STRING;
    const size_t element = is_string && H5Tis_variable_str(type) > 0 ? sizeof(char*) : H5Tget_size(type);
    std::vector<unsigned char> values(std::max<hsize_t>(count, 1) * element);
    std::vector<std::string> text(std::max<hsize_t>(count, 1), std::string(1 + fill % 5, 'a' + fill % 26));
    for (size_t i = 0; i < values.size() / element; ++i) {
      const double v = fill % 7 == 0 ? NAN : fill % 7 == 1 ? INFINITY : fill % 7 == 2 ? -1.0 - i : fill * 0.5 + i;
      if (H5Tget_class(type) == H5T_FLOAT && element == 4) reinterpret_cast<float*>(values.data())[i] = float(v);
      if (H5Tget_class(type) == H5T_FLOAT && element == 8) reinterpret_cast<double*>(values.data())[i] = v;
      if (H5Tget_class(type) == H5T_INTEGER && element == 8)
        reinterpret_cast<int64_t*>(values.data())[i] =
            std::isfinite(v) ? int64_t(v) * (fill % 3 == 0 ? 1 << 30 : 1) : -7;
      if (H5Tget_class(type) == H5T_INTEGER && element == 1) values[i] = static_cast<unsigned char>(fill + i);
      if (is_string && H5Tis_variable_str(type) > 0) reinterpret_cast<const char**>(values.data())[i] = text[i].c_str();
      if (is_string && H5Tis_variable_str(type) <= 0)
        std::memset(values.data() + i * element, 'a' + fill % 26, element);
    }
    if (op % 4 == 1) {  // an attribute (never huge: attributes live in the object header)
      if (!huge) {
        const hid_t a = H5Acreate2(owner, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) H5Awrite(a, type, values.data()), H5Aclose(a);
      }
    } else {  // a dataset; forged huge extents are chunked and left unwritten
      if (H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(file, name.c_str(), H5P_DEFAULT);
      const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
      if (huge && rank > 0) {
        std::vector<hsize_t> chunk(rank, 1);
        H5Pset_chunk(dcpl, rank, chunk.data());
      }
      const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
      H5Pset_create_intermediate_group(lcpl, 1);
      const hid_t ds = H5Dcreate2(file, name.c_str(), type, space, lcpl, dcpl, H5P_DEFAULT);
      if (ds >= 0 && !huge) H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
      if (ds >= 0) H5Dclose(ds);
      H5Pclose(lcpl), H5Pclose(dcpl);
    }
    H5Sclose(space), H5Tclose(type);
  }
  if (on_table)
    H5Dclose(owner);
  else
    H5Gclose(owner);
}

void read_back(const std::string& kind, const std::string& path) {
  if (kind == "checkpoint") {
    Tagger t = load_tagger(path);
    NoGradGuard no_grad;
    t.model->set_training(false);
    t.model->forward(Var(Tensor::zeros({1, t.images.channels, t.images.size, t.images.size})));
  } else if (kind == "features") {
    read_features(path);
  } else {
    JetFile f(path);
    NonFiniteReport dropped;
    if (f.size() > 0) f.read(0, std::min<int64_t>(f.size(), 4), dropped);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  const Kind& kind = kinds()[in.next() % kinds().size()];
  const fs::path work = directory() / ("work_" + kind.name + ".h5");
  write_file(work, template_bytes(kind.name));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t file = H5Fopen(work.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return 0;
  for (int edits = 1 + in.next() % 3; edits > 0 && in.pos < in.size; --edits)
    edit(file, kind.objects[in.next() % kind.objects.size()], in);
  H5Fclose(file);
  try {
    read_back(kind.name, work.string());
  } catch (const toptag::Error&) {  // refused with a message: what a bad file should get
  }
  return 0;
}
