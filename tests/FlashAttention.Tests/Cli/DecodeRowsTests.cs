using System.Text.Json;
using System.Text.Json.Nodes;
using FlashAttn.Cli.Bench;
using FlashAttn.Cli.Gpu;

namespace FlashAttn.Tests.Cli;

/// <summary>Decode rows in the results format: the new kv_tbps / copy_tbps keys, written only when set, and read back from the peer script.</summary>
public sealed class DecodeRowsTests
{
    private static JsonObject Json(BenchRow row) => JsonSerializer.SerializeToNode(row, BenchJson.Default.BenchRow)!.AsObject();

    [Fact]
    public void OursCarriesTheDecodeKeys()
    {
        var c = new DecodeCase(8, 32768, DecodeLayout.Paged);
        var json = Json(DecodeRows.Ours(c, ms: 0.4, runs: 9, copyTbps: 3.0123456, device: "GPU", run: "2026-11-26T10:15:00Z"));
        Assert.Equal("decode", json["op"]!.GetValue<string>());
        Assert.Equal("fwd", json["mode"]!.GetValue<string>());
        Assert.Equal(1, json["seqlen_q"]!.GetValue<int>());
        Assert.Equal(32768, json["seqlen_k"]!.GetValue<int>());
        Assert.Equal((32, 8, 128), (json["heads"]!.GetValue<int>(), json["heads_kv"]!.GetValue<int>(), json["headdim"]!.GetValue<int>()));
        Assert.Equal("paged", json["feature"]!.GetValue<string>());
        Assert.Equal(Math.Round(c.KvBytes / 0.4e-3 / 1e12, 3), json["kv_tbps"]!.GetValue<double>());
        Assert.Equal(3.012, json["copy_tbps"]!.GetValue<double>());
        Assert.Equal(0.4, json["ms"]!.GetValue<double>());
    }

    [Fact]
    public void AttentionRowsLeaveTheDecodeKeysOut()
    {
        var row = DecodeRows.Ours(new DecodeCase(1, 1024), 0.01, 9, 3.0, "GPU", "run") with { Op = "attention", KvTbps = null, CopyTbps = null, Feature = null };
        var json = Json(row);
        Assert.False(json.ContainsKey("kv_tbps"));
        Assert.False(json.ContainsKey("copy_tbps"));
        Assert.False(json.ContainsKey("feature"));
    }

    [Fact]
    public void PeerRowsRoundTrip()
    {
        var peer = JsonNode.Parse("""
            {"impl": "torch-sdpa", "op": "decode", "mode": "fwd", "dtype": "bf16", "batch": 16, "seqlen_q": 1, "seqlen_k": 131072,
             "heads": 32, "heads_kv": 8, "headdim": 128, "causal": false, "ms": 2.80123456, "tflops": 24.5, "kv_tbps": 3.0671234,
             "copy_tbps": 3.01, "runs": 9, "device": "NVIDIA H100 80GB HBM3", "run": "2026-11-26T10:15:00Z"}
            """)!.AsObject();
        var row = DecodeRows.FromPeer(peer);
        Assert.Equal(("torch-sdpa", "decode", 16, 1, 131072), (row.Impl, row.Op, row.Batch, row.SeqlenQ, row.SeqlenK));
        Assert.Equal((2.80123, 3.067, 3.01, 9), (row.Ms, row.KvTbps!.Value, row.CopyTbps!.Value, row.Runs));
        Assert.Null(row.Feature);
        Assert.Equal(row, DecodeRows.FromPeer(Json(row)));
    }

    [Fact]
    public void PeerRowsWithoutBandwidthReadAsNull()
    {
        var row = DecodeRows.FromPeer(JsonNode.Parse("""{"impl": "torch-flash", "batch": 1, "seqlen_q": 1, "seqlen_k": 1024, "ms": 0.02}""")!.AsObject());
        Assert.Null(row.KvTbps);
        Assert.Null(row.CopyTbps);
        Assert.Equal("decode", row.Op);
    }
}
