-- wrk script: every request is a POST with no body, as the prototype's
-- benchmark sent to /transfer/test.  Debian's "bombardier" package is a
-- game, not the HTTP load generator, so wrk stands in for it:
--   wrk -t 2 -c 100 -d 5s --latency -s bench/http/post.lua http://127.0.0.1:55611/transfer/test
wrk.method = "POST"
