-- Feeds trades_1m from every insert into trades.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trades_1m_mv TO {db}.trades_1m AS
SELECT
    toStartOfMinute(trades.ts) AS ts,
    venue,
    symbol,
    argMinState(price, trades.ts) AS open,
    max(price) AS high,
    min(price) AS low,
    argMaxState(price, trades.ts) AS close,
    sum(qty) AS volume,
    sum(price * qty) AS notional,
    sum(if(buyer_is_maker = 0, qty, 0)) AS buy_volume,
    toUInt64(count()) AS trades
FROM {db}.trades
GROUP BY ts, venue, symbol
