# nginx 1.22.1: its own ./configure, with Debian's module set for the `nginx` (bin) flavour
# and Debian's compiler options (debian/rules adds -fPIC to dpkg-buildflags' CFLAGS and
# LDFLAGS). Two changes: mail and stream are built statically (Debian makes them dynamic
# modules), so their fixes land in objs/nginx; the dynamic modules needing extra packages
# (geoip, image_filter, perl, xslt) are left out (no Debian patch touches them).
./configure --with-cc-opt="$CFLAGS -fPIC $CPPFLAGS" --with-ld-opt="$LDFLAGS -fPIC" \
  --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf \
  --http-log-path=/var/log/nginx/access.log --error-log-path=stderr \
  --lock-path=/var/lock/nginx.lock --pid-path=/run/nginx.pid \
  --modules-path=/usr/lib/nginx/modules \
  --http-client-body-temp-path=/var/lib/nginx/body --http-fastcgi-temp-path=/var/lib/nginx/fastcgi \
  --http-proxy-temp-path=/var/lib/nginx/proxy --http-scgi-temp-path=/var/lib/nginx/scgi \
  --http-uwsgi-temp-path=/var/lib/nginx/uwsgi \
  --with-compat --with-debug --with-pcre-jit --with-threads \
  --with-http_ssl_module --with-http_stub_status_module --with-http_realip_module \
  --with-http_auth_request_module --with-http_v2_module --with-http_dav_module \
  --with-http_slice_module --with-http_addition_module --with-http_flv_module \
  --with-http_gunzip_module --with-http_gzip_static_module --with-http_mp4_module \
  --with-http_random_index_module --with-http_secure_link_module --with-http_sub_module \
  --with-mail --with-mail_ssl_module --with-stream --with-stream_ssl_module \
  --with-stream_ssl_preread_module --with-stream_realip_module
make -j2
