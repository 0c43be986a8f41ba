// JDBC workload for proxy/drivers_test.go (see drvWant there for the
// contract). Usage: java -cp CLASSES:postgresql.jar Workload URL USER PASSWORD PREFIX WORKERS
//
// The URL carries prepareThreshold=1, so every PreparedStatement is a named
// server-side statement from its first execution. Each of WORKERS threads
// opens its own connection. Inserts run the same PreparedStatement for
// single rows (each in its own autocommit transaction) and as a batch;
// a lookup statement is executed many times across autocommit and explicit
// transactions; COPY goes through CopyManager; the cursor is DECLARE/FETCH
// inside a transaction, plus a fetch-size (portal) read. Prints
// {"workers":[...],"extra":{...}} on stdout.

import java.io.StringReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;

import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public final class Workload {
    static String url, user, password, p;

    public static void main(String[] args) throws Exception {
        url = args[0];
        user = args[1];
        password = args[2];
        p = args[3];
        int workers = Integer.parseInt(args[4]);
        Map<Integer, String> results = new ConcurrentHashMap<>();
        List<String> failures = new CopyOnWriteArrayList<>();
        List<Thread> threads = new ArrayList<>();
        for (int w = 0; w < workers; w++) {
            final int wk = w;
            Thread t = new Thread(() -> {
                try (Connection c = DriverManager.getConnection(url, user, password)) {
                    results.put(wk, run(c, wk));
                } catch (Exception e) {
                    StringBuilder sb = new StringBuilder("worker " + wk + ": " + e);
                    for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
                        sb.append(" caused by ").append(cause);
                    }
                    if (e instanceof SQLException && ((SQLException) e).getNextException() != null) {
                        sb.append(" next: ").append(((SQLException) e).getNextException());
                    }
                    failures.add(sb.toString());
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        if (!failures.isEmpty()) {
            System.err.println(String.join("\n", failures));
            System.exit(1);
        }
        StringBuilder out = new StringBuilder("{\"workers\":[");
        for (int w = 0; w < workers; w++) {
            if (w > 0) out.append(',');
            out.append(results.get(w));
        }
        out.append("],\"extra\":{}}");
        System.out.println(out);
    }

    static String state(SQLException e) {
        return e.getSQLState();
    }

    static long one(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            try (ResultSet rs = ps.executeQuery()) {
                if (!rs.next()) throw new SQLException("no row for " + sql);
                return rs.getLong(1);
            }
        }
    }

    static String run(Connection c, int w) throws Exception {
        Map<String, Object> r = new LinkedHashMap<>();
        List<Long> pids = new ArrayList<>();
        r.put("w", w);
        c.setAutoCommit(true);
        pids.add(one(c, "SELECT pg_backend_pid()"));

        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2, upper(?::text)")) {
            ps.setInt(1, (w + 1) * 7);
            ps.setString(2, "w-" + w);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                r.put("echo", rs.getInt(1) + ":" + rs.getString(2));
            }
        }

        String insSql = "INSERT INTO " + p + "_items (id, worker, label, qty) VALUES (?, ?, ?, ?)";
        try (PreparedStatement ins = c.prepareStatement(insSql)) {
            // Rows 0-4 one by one, each its own autocommit transaction.
            for (int i = 0; i < 5; i++) {
                ins.setInt(1, w * 1000 + i);
                ins.setInt(2, w);
                ins.setString(3, "w" + w + "-" + i);
                ins.setInt(4, i);
                if (ins.executeUpdate() != 1) throw new SQLException("insert " + i);
            }
            // Rows 5-9 as one batch.
            for (int i = 5; i < 10; i++) {
                ins.setInt(1, w * 1000 + i);
                ins.setInt(2, w);
                ins.setString(3, "w" + w + "-" + i);
                ins.setInt(4, i);
                ins.addBatch();
            }
            int[] counts = ins.executeBatch();
            StringBuilder sb = new StringBuilder();
            for (int n : counts) sb.append(n);
            r.put("batch", sb.toString());
        }
        String countSum = "SELECT count(*), coalesce(sum(qty), 0) FROM " + p + "_items WHERE worker = ?";
        try (PreparedStatement cs = c.prepareStatement(countSum)) {
            cs.setInt(1, w);
            try (ResultSet rs = cs.executeQuery()) {
                rs.next();
                r.put("count", rs.getLong(1));
                r.put("sum", rs.getLong(2));
            }

            // The same server-side statement, executed many times, half in
            // autocommit and half inside explicit transactions.
            try (PreparedStatement look = c.prepareStatement("SELECT qty FROM " + p + "_items WHERE id = ?")) {
                long total = 0;
                for (int round = 0; round < 4; round++) {
                    c.setAutoCommit(round % 2 == 0);
                    for (int i = 0; i < 10; i++) {
                        look.setInt(1, w * 1000 + i);
                        try (ResultSet rs = look.executeQuery()) {
                            rs.next();
                            total += rs.getLong(1);
                        }
                    }
                    if (round % 2 == 1) c.commit();
                }
                c.setAutoCommit(true);
                r.put("reexec_sum", total);
            }

            c.setAutoCommit(false);
            try (PreparedStatement up = c.prepareStatement("UPDATE " + p + "_items SET qty = qty + 100 WHERE worker = ? AND id % 2 = 0")) {
                up.setInt(1, w);
                r.put("updated", up.executeUpdate());
            }
            try (ResultSet rs = cs.executeQuery()) {
                rs.next();
                r.put("sum_in_tx", rs.getLong(2));
            }
            c.commit();
            try (ResultSet rs = cs.executeQuery()) {
                rs.next();
                r.put("sum_after_commit", rs.getLong(2));
            }
            c.commit();

            try (PreparedStatement del = c.prepareStatement("DELETE FROM " + p + "_items WHERE worker = ?")) {
                del.setInt(1, w);
                r.put("deleted", del.executeUpdate());
            }
            try (ResultSet rs = cs.executeQuery()) {
                rs.next();
                r.put("count_in_tx", rs.getLong(1));
            }
            c.rollback();
            try (ResultSet rs = cs.executeQuery()) {
                rs.next();
                r.put("count_after_rollback", rs.getLong(1));
            }
            c.commit();
            c.setAutoCommit(true);
            pids.add(one(c, "SELECT pg_backend_pid()"));

            try (Statement st = c.createStatement()) {
                st.executeQuery("SELECT 1/0");
                r.put("div0", "no error");
            } catch (SQLException e) {
                r.put("div0", state(e));
            }
            r.put("after_div0", one(c, "SELECT 1"));
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement(insSql)) {
                ins.setInt(1, w * 1000 + 50);
                ins.setInt(2, w);
                ins.setString(3, "doomed");
                ins.setInt(4, 1000);
                ins.executeUpdate();
                ins.setInt(1, w * 1000);
                ins.setString(3, "dup");
                ins.setInt(4, 0);
                try {
                    ins.executeUpdate();
                    r.put("dup", "no error");
                } catch (SQLException e) {
                    r.put("dup", state(e));
                }
            }
            try {
                one(c, "SELECT 1");
                r.put("aborted", "no error");
            } catch (SQLException e) {
                r.put("aborted", state(e));
            }
            c.rollback();
            c.setAutoCommit(true);
            try (ResultSet rs = cs.executeQuery()) {
                rs.next();
                r.put("count_after_error", rs.getLong(1));
            }
        }

        StringBuilder data = new StringBuilder();
        for (int i = 1; i <= 50; i++) data.append(i).append('\t').append(w).append("\tp").append(i).append('\n');
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        r.put("copied", cm.copyIn("COPY " + p + "_copy (id, worker, payload) FROM STDIN", new StringReader(data.toString())));
        r.put("copy_count", one(c, "SELECT count(*) FROM " + p + "_copy WHERE worker = ?", w));
        r.put("copy_sum", one(c, "SELECT coalesce(sum(id), 0) FROM " + p + "_copy WHERE worker = ?", w));

        c.setAutoCommit(false);
        try (Statement st = c.createStatement()) {
            st.execute("DECLARE cur CURSOR FOR SELECT id FROM " + p + "_copy WHERE worker = " + w + " ORDER BY id");
            long rows = 0, sum = 0, fetches = 0;
            try (PreparedStatement fetch = c.prepareStatement("FETCH 20 FROM cur")) {
                for (;;) {
                    int got = 0;
                    try (ResultSet rs = fetch.executeQuery()) {
                        while (rs.next()) {
                            got++;
                            sum += rs.getLong(1);
                        }
                    }
                    if (got == 0) break;
                    fetches++;
                    rows += got;
                }
            }
            r.put("cursor_rows", rows);
            r.put("cursor_sum", sum);
            r.put("cursor_fetches", fetches);
        }
        c.commit();
        // Fetch-size reads use a portal and Execute with a row limit.
        try (PreparedStatement ps = c.prepareStatement("SELECT id FROM " + p + "_copy WHERE worker = ? ORDER BY id")) {
            ps.setFetchSize(20);
            ps.setInt(1, w);
            long rows = 0, sum = 0;
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    rows++;
                    sum += rs.getLong(1);
                }
            }
            r.put("portal_rows", rows);
            r.put("portal_sum", sum);
        }
        c.commit();
        c.setAutoCommit(true);
        pids.add(one(c, "SELECT pg_backend_pid()"));

        StringBuilder sb = new StringBuilder("{");
        for (Map.Entry<String, Object> e : r.entrySet()) {
            if (sb.length() > 1) sb.append(',');
            sb.append('"').append(e.getKey()).append("\":");
            Object v = e.getValue();
            if (v instanceof String) sb.append('"').append(v).append('"');
            else sb.append(v);
        }
        sb.append(",\"pids\":").append(pids.toString().replace(" ", "")).append('}');
        return sb.toString();
    }
}
