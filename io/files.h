// What a command reads and writes, checked against each other by file identity before any work, and
// files written whole and atomically: under a unique temporary name beside the target, then renamed
// into place, so an interrupted write never leaves a truncated file and never truncates another file
// (HDF5 files have AtomicH5File in io/h5.h, built on the same temporary files).
#pragma once

#include <string>
#include <vector>

namespace toptag {

// The files one command reads and the paths it will write, by the flag that names each:
//   FileUse()
//       .reads("--checkpoint", a.checkpoint)
//       .writes("--output", a.output)
//       .writes_in("--output-dir", dir, {"last.h5", "best.h5"})
//       .check();
// check() throws toptag::Error naming both flags if a written path is one of the read files (the same
// device and inode: through any spelling, symbolic link or hard link), or if a directory the command
// replaces whole holds one. It also remembers the read files for the rest of the process, so that
// every atomic write (write_text_atomically, AtomicH5File, plots) refuses to replace one of them even
// where a command forgot to declare the path. Empty paths are ignored (an optional flag not given).
class FileUse {
 public:
  FileUse& reads(const std::string& flag, const std::string& path);
  FileUse& writes(const std::string& flag, const std::string& path);
  // `names` inside directory `dir` (created if absent).
  FileUse& writes_in(const std::string& flag, const std::string& dir, const std::vector<std::string>& names);
  // A directory removed and rebuilt whole (a Triton model directory): no read file may lie below it.
  FileUse& replaces(const std::string& flag, const std::string& dir);
  void check() const;

 private:
  struct Named {
    std::string flag, path;
  };
  std::vector<Named> reads_, writes_, replaced_;
};

// Throws toptag::Error naming `path` if it is one of the files a FileUse::check() of this process
// declared as read, or a directory holding one: the last guard of every atomic write and directory
// replacement, just before its rename.
void refuse_replacing_an_input(const std::string& path);

// A new, empty file with a unique name beside `target` (mkstemp in the target's directory: nothing
// that exists is ever truncated), ending in `suffix`; removed by the destructor unless released.
class TempFile {
 public:
  explicit TempFile(const std::string& target, const std::string& suffix = "");
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const std::string& path() const { return path_; }
  // Renames the temporary over `target` (after refuse_replacing_an_input); an error names the target.
  void move_to(const std::string& target);

 private:
  std::string path_;
  bool moved_ = false;
};

// A new, empty directory named PREFIX.tmp-XXXXXX (mkdtemp), removed with its contents by remove() or
// the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // Removes it now; an error names what could not be removed.
  void remove();

 private:
  std::string path_;
};

// The target a TempFile's path stands for ("run/last.h5" for "run/last.h5.tmp-a8Xk2q"); any other
// path unchanged. For messages about a file being written: the user knows it by its target's name.
std::string temp_file_target(const std::string& path);

// Throws toptag::Error naming `dir` and saying `why` it matters unless a file can be created in it
// (a TempFile, removed at once): for commands that write there only after long work.
void check_writable_directory(const std::string& dir, const std::string& why);

// Throws toptag::Error naming `path` if it cannot be written.
void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace toptag
