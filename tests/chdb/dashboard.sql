-- tests/chdb/dashboard.sql: the seven admin-dashboard queries of CONTRACT §6
-- in the modern dialect (ClickHouse >= 20: JSONExtractString/JSONExtractInt,
-- DateTime64), as worker/report.c sends them to such servers. Run by
-- clickhouse/test_chdb against generated rows; usable by hand with
--   clickhouse-client --param_org_id_hash=<sha256 hex> \
--     --param_start_date=2024-03-01 --param_end_date=2024-03-31 --multiquery < dashboard.sql
-- The window is half-open, [start_date, end_date) in UTC. Statements are
-- separated by ";" at the end of a line; each one's name is the comment
-- line before it (test_chdb checks them by name).

-- daily_active_users
SELECT toDate(occurred_at) AS day, uniqExact(anonymous_user_id) AS active_anonymous_users
FROM product_telemetry_events
WHERE org_id_hash = {org_id_hash:String}
  AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
  AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
GROUP BY day ORDER BY day;

-- top_routes
SELECT route_pattern, count() AS events, uniqExact(session_id) AS sessions,
       uniqExact(anonymous_user_id) AS anonymous_users
FROM product_telemetry_events
WHERE org_id_hash = {org_id_hash:String}
  AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
  AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
  AND name = 'page_viewed'
GROUP BY route_pattern ORDER BY events DESC, route_pattern LIMIT 25;

-- features
SELECT JSONExtractString(payload_json, 'feature') AS feature,
       JSONExtractString(payload_json, 'surface') AS surface,
       count() AS views, uniqExact(anonymous_user_id) AS anonymous_users
FROM product_telemetry_events
WHERE org_id_hash = {org_id_hash:String}
  AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
  AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
  AND name = 'feature_viewed'
GROUP BY feature, surface ORDER BY views DESC, feature, surface;

-- filters
SELECT JSONExtractString(payload_json, 'view') AS view,
       JSONExtractString(payload_json, 'filterKey') AS filter_key,
       count() AS changes, avg(JSONExtractInt(payload_json, 'valueCount')) AS avg_value_count
FROM product_telemetry_events
WHERE org_id_hash = {org_id_hash:String}
  AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
  AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
  AND name = 'filter_changed'
GROUP BY view, filter_key ORDER BY changes DESC, view, filter_key;

-- charts
SELECT JSONExtractString(payload_json, 'chart') AS chart,
       JSONExtractString(payload_json, 'action') AS action,
       JSONExtractString(payload_json, 'surface') AS surface,
       count() AS interactions, uniqExact(session_id) AS sessions
FROM product_telemetry_events
WHERE org_id_hash = {org_id_hash:String}
  AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
  AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
  AND name = 'chart_interacted'
GROUP BY chart, action, surface ORDER BY interactions DESC, chart, action, surface;

-- client_errors
SELECT route_pattern, JSONExtractString(payload_json, 'boundary') AS boundary,
       JSONExtractString(payload_json, 'errorClass') AS error_class,
       count() AS errors, uniqExact(anonymous_user_id) AS affected_anonymous_users
FROM product_telemetry_events
WHERE org_id_hash = {org_id_hash:String}
  AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
  AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
  AND name = 'client_error'
GROUP BY route_pattern, boundary, error_class
ORDER BY errors DESC, route_pattern, boundary, error_class;

-- session_summary
SELECT q[1] AS p50, q[2] AS p75, q[3] AS p90, q[4] AS p95, pages, interactions FROM (
  SELECT quantiles(0.5, 0.75, 0.9, 0.95)(JSONExtractInt(payload_json, 'durationMs')) AS q,
         avg(JSONExtractInt(payload_json, 'pagesViewed')) AS pages,
         avg(JSONExtractInt(payload_json, 'interactions')) AS interactions
  FROM product_telemetry_events
  WHERE org_id_hash = {org_id_hash:String}
    AND occurred_at >= toDateTime64({start_date:String} || ' 00:00:00', 3, 'UTC')
    AND occurred_at < toDateTime64({end_date:String} || ' 00:00:00', 3, 'UTC')
    AND name = 'session_ended');
