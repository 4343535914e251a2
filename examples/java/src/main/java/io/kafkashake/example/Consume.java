package io.kafkashake.example;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;

import org.apache.avro.file.DataFileReader;
import org.apache.avro.file.SeekableByteArrayInput;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.bson.BsonDocument;
import org.bson.BsonNull;
import org.bson.BsonTimestamp;
import org.bson.BsonValue;
import org.bson.RawBsonDocument;
import org.bson.json.JsonMode;
import org.bson.json.JsonWriterSettings;

/**
 * Reads every partition of a kafkashake topic from the beginning to its end and prints one JSON line per event:
 * {"partition": 3, "offset": 41, "format": "raw", "ns": "shop.orders", "op": "u", "ts": [1700000000, 7],
 *  "id": {"$oid": "65a1..."}}
 * Formats are told apart by their bytes (docs/formats.md); fragments are put back together; heartbeats are passed
 * over. Usage: java -cp ... io.kafkashake.example.Consume BOOTSTRAP TOPIC
 */
public final class Consume {
    private static final JsonWriterSettings CANONICAL = JsonWriterSettings.builder().outputMode(JsonMode.EXTENDED).build();

    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        config.put(ConsumerConfig.GROUP_ID_CONFIG, "example-" + UUID.randomUUID());
        config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        String topic = args[1];
        try (KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(config, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo info : consumer.partitionsFor(topic)) {
                partitions.add(new TopicPartition(topic, info.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            Map<TopicPartition, Long> ends = consumer.endOffsets(partitions);
            Map<Integer, Fragments> fragments = new HashMap<>();
            Set<TopicPartition> done = new HashSet<>();
            while (done.size() < partitions.size()) {
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(500))) {
                    handle(record, fragments.computeIfAbsent(record.partition(), p -> new Fragments()));
                }
                for (TopicPartition partition : partitions) {
                    if (consumer.position(partition) >= ends.get(partition)) {
                        done.add(partition);
                    }
                }
            }
        }
    }

    private static void handle(ConsumerRecord<byte[], byte[]> record, Fragments fragments) throws Exception {
        Map<String, String> headers = new HashMap<>();
        for (Header header : record.headers()) {
            headers.put(header.key(), header.value() == null ? "" : new String(header.value(), StandardCharsets.UTF_8));
        }
        if ("true".equals(headers.get("kafkashake.heartbeat"))) {
            return; // no change: the producer's watermark
        }
        byte[] value = record.value();
        if (headers.containsKey("kafkashake.fragment.index")) {
            value = fragments.add(headers, value, record.offset());
            if (value == null) {
                return;
            }
        }
        String format = formatOf(value);
        for (BsonDocument event : eventsOf(format, value)) {
            System.out.println(line(record, format, event));
        }
    }

    static String formatOf(byte[] value) {
        if (value.length >= 4 && value[0] == 'O' && value[1] == 'b' && value[2] == 'j' && value[3] == 1) {
            return "raw";
        }
        if (value.length >= 5 && ByteBuffer.wrap(value).order(ByteOrder.LITTLE_ENDIAN).getInt() == value.length
                && value[value.length - 1] == 0) {
            return "bson"; // checked before JSON: a BSON length byte can be '{'
        }
        String text = new String(value, StandardCharsets.UTF_8).stripLeading();
        if (text.startsWith("{")) {
            return "json";
        }
        throw new IllegalArgumentException("not a kafkashake message");
    }

    static List<BsonDocument> eventsOf(String format, byte[] value) throws IOException {
        List<BsonDocument> events = new ArrayList<>();
        switch (format) {
            case "raw" -> {
                try (DataFileReader<GenericRecord> reader =
                         new DataFileReader<>(new SeekableByteArrayInput(value), new GenericDatumReader<>())) {
                    for (GenericRecord record : reader) {
                        ByteBuffer event = (ByteBuffer) record.get("event");
                        byte[] bytes = new byte[event.remaining()];
                        event.get(bytes);
                        events.add(new RawBsonDocument(bytes));
                    }
                }
            }
            case "bson" -> events.add(new RawBsonDocument(value));
            default -> {
                BsonDocument event = BsonDocument.parse(new String(value, StandardCharsets.UTF_8));
                if (event.size() == 1 && event.containsKey("kafkashake.bson")) {
                    // an event no JSON rendering gives back exactly travels as BSON inside JSON
                    event = new RawBsonDocument(event.getBinary("kafkashake.bson").getData());
                }
                events.add(event);
            }
        }
        return events;
    }

    static String line(ConsumerRecord<byte[], byte[]> record, String format, BsonDocument event) {
        String ns;
        String op;
        BsonTimestamp ts;
        BsonValue id;
        if (event.containsKey("operationType")) {
            BsonDocument namespace = event.getDocument("ns", new BsonDocument());
            ns = namespace.getString("db").getValue()
                + (namespace.containsKey("coll") ? "." + namespace.getString("coll").getValue() : "");
            op = event.getString("operationType").getValue();
            ts = event.getTimestamp("clusterTime");
            id = event.get("documentKey");
        } else {
            ns = event.getString("ns").getValue();
            op = event.getString("op").getValue();
            ts = event.getTimestamp("ts");
            id = "u".equals(op) ? event.getDocument("o2").get("_id") : event.getDocument("o").get("_id");
        }
        // The id as canonical Extended JSON, as bson renders a value inside a document.
        String wrapped = new BsonDocument("id", id == null ? new BsonNull() : id).toJson(CANONICAL);
        String idJson = wrapped.substring(wrapped.indexOf(':') + 1, wrapped.lastIndexOf('}')).strip();
        return String.format("{\"partition\": %d, \"offset\": %d, \"format\": \"%s\", \"ns\": %s, \"op\": %s, "
                + "\"ts\": [%d, %d], \"id\": %s}", record.partition(), record.offset(), format, quote(ns), quote(op),
            ts.getTime(), ts.getInc(), idJson);
    }

    static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                default -> out.append(c < 0x20 ? String.format("\\u%04x", (int) c) : String.valueOf(c));
            }
        }
        return out.append('"').toString();
    }

    /** One partition's fragments (headers kafkashake.fragment.*) back into whole values. */
    static final class Fragments {
        private final List<byte[]> parts = new ArrayList<>();

        byte[] add(Map<String, String> headers, byte[] value, long offset) throws NoSuchAlgorithmException {
            int index = Integer.parseInt(headers.get("kafkashake.fragment.index"));
            int count = Integer.parseInt(headers.get("kafkashake.fragment.count"));
            if (index == 0) {
                parts.clear(); // a value left incomplete is sent again in full by the producer
            }
            if (index != parts.size()) {
                throw new IllegalStateException("fragment " + index + " at offset " + offset + " without the ones before it");
            }
            parts.add(value);
            if (parts.size() < count) {
                return null;
            }
            int size = parts.stream().mapToInt(part -> part.length).sum();
            ByteBuffer whole = ByteBuffer.allocate(size);
            parts.forEach(whole::put);
            parts.clear();
            byte[] bytes = whole.array();
            String digest = HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
            if (!digest.equals(headers.get("kafkashake.fragment.sha256"))) {
                throw new IllegalStateException("fragments ending at offset " + offset + " fail their SHA-256 check");
            }
            return bytes;
        }
    }
}
