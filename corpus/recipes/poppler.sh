# poppler 22.12: upstream's CMake, configured as debian/rules does (Release, Debian's
# CFLAGS/CXXFLAGS as the _RELEASE flags, lcms2, openjpeg2, unstable ABI headers), in build/,
# with compile_commands.json. The core library and the utils only: the glib, Qt5, Qt6 and
# cpp wrappers, gtk-doc, boost and curl are off (large build dependencies; no fix touches
# them), and cairo is not looked for (pdftocairo is not built).
mkdir -p build
cd build
cmake .. -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS_RELEASE="$CFLAGS" -DCMAKE_CXX_FLAGS_RELEASE="$CXXFLAGS" \
  -DENABLE_GLIB=OFF -DENABLE_QT5=OFF -DENABLE_QT6=OFF -DENABLE_CPP=OFF -DENABLE_GTK_DOC=OFF \
  -DENABLE_BOOST=OFF -DENABLE_LIBCURL=OFF -DWITH_Cairo=OFF \
  -DENABLE_CMS=lcms2 -DENABLE_LIBOPENJPEG=openjpeg2 -DENABLE_UTILS=ON \
  -DBUILD_GTK_TESTS=OFF -DBUILD_QT5_TESTS=OFF -DBUILD_QT6_TESTS=OFF -DBUILD_CPP_TESTS=OFF \
  -DBUILD_MANUAL_TESTS=OFF -DENABLE_UNSTABLE_API_ABI_HEADERS=ON \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
nice -n 19 make -j2
