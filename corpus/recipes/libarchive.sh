# libarchive 3.6.2: autotools (the release's configure; Debian autoreconfs the same
# configure.ac), with Debian's configure options for the tools: bsdtar, bsdcpio and
# bsdcat linked to the shared library. Compression kept: zlib, bzip2, xz; the other
# optional libraries Debian builds with (nettle, xml2, lz4, zstd, acl, ext2fs) are left
# out. Every reader and writer of the corpus's fixes (rar, rar5, warc, iso9660, tar,
# pax, zip) is compiled without them.
set -e
./configure --prefix=/usr --disable-static \
  --enable-bsdtar=shared --enable-bsdcpio=shared --enable-bsdcat=shared \
  --without-openssl --without-nettle --without-mbedtls --without-xml2 --without-expat \
  --without-lz4 --without-zstd --without-lzo2 --without-libb2 --without-cng \
  --disable-acl --disable-xattr
make -j2
