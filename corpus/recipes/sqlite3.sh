# SQLite 3.40.1: Debian's .orig is the full source tree (not the amalgamation). Its autotools
# build with debian/rules' flags and features, --disable-amalgamation as debian/rules (one
# object per source file in libsqlite3.so). The tcl extension is off (tcl-dev); tclsh still
# generates sources. The sqlite3 shell embeds its own amalgamation and is not a binary here.
export DEB_BUILD_MAINT_OPTIONS="hardening=+all future=+lfs"
eval "$(dpkg-buildflags --export=sh)"
export CFLAGS="$CFLAGS -O2 -fno-strict-aliasing \
 -DSQLITE_SECURE_DELETE -DSQLITE_ENABLE_COLUMN_METADATA \
 -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS3_PARENTHESIS \
 -DSQLITE_ENABLE_RTREE=1 -DSQLITE_SOUNDEX=1 -DSQLITE_ENABLE_UNLOCK_NOTIFY \
 -DSQLITE_OMIT_LOOKASIDE=1 -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ALLOW_ROWID_IN_VIEW \
 -DSQLITE_ENABLE_UPDATE_DELETE_LIMIT=1 -DSQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_ENABLE_JSON1 \
 -DSQLITE_LIKE_DOESNT_MATCH_BLOBS -DSQLITE_THREADSAFE=1 -DSQLITE_ENABLE_FTS3_TOKENIZER=1 \
 -DSQLITE_USE_URI=1 -DSQLITE_MAX_SCHEMA_RETRY=25 -DSQLITE_ENABLE_PREUPDATE_HOOK \
 -DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_STMTVTAB -DSQLITE_MAX_VARIABLE_NUMBER=250000"
export LDFLAGS="$LDFLAGS -Wl,--as-needed"
./configure --prefix=/usr --disable-static --disable-tcl --enable-threadsafe \
  --enable-load-extension --enable-json --enable-fts4 --enable-fts5 --enable-session \
  --disable-amalgamation
nice -n 19 make -j2
