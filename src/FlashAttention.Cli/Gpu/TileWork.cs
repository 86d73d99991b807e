namespace FlashAttn.Cli.Gpu;

/// <summary>
/// The (query, key) pairs the fused kernels compute, whole tiles counted, for issue 5's "windowed attention counted on the
/// work it does": a window's sliding key range makes every query block compute keys its rows do not see, so visible pairs
/// understate the work. The block ranges follow the kernels' own formulas (flash_fwd.cu / flash_fwd_sm90.cu: key blocks
/// [n_min, n_max) per query block; flash_bwd.cu: query blocks [m_first, m_last] per key block), with bottom-right aligned
/// windows; left or right &lt; 0 is unbounded, and causal is right = 0.
/// </summary>
internal static class TileWork
{
    /// <summary>Pairs the forward computes for one (batch, head): blockM x blockN per visited tile.</summary>
    public static long ForwardPairs(int seqlenQ, int seqlenK, int blockM, int blockN, int left, int right)
    {
        int offset = seqlenK - seqlenQ;
        long pairs = 0;
        for (int row0 = 0; row0 < seqlenQ; row0 += blockM)
        {
            int lastRow = Math.Min(row0 + blockM, seqlenQ) - 1;
            int keyEnd = right >= 0 ? Math.Max(0, Math.Min(seqlenK, lastRow + offset + right + 1)) : seqlenK;
            int keyBegin = left >= 0 ? Math.Max(0, row0 + offset - left) : 0;
            int blocks = (keyEnd + blockN - 1) / blockN - keyBegin / blockN;
            pairs += Math.Max(0, blocks) * (long)blockM * blockN;
        }
        return pairs;
    }

    /// <summary>Pairs the backward computes for one (batch, query head): blockN keys x blockM queries per visited tile.</summary>
    public static long BackwardPairs(int seqlenQ, int seqlenK, int blockN, int blockM, int left, int right)
    {
        int offset = seqlenK - seqlenQ;
        long pairs = 0;
        for (int key0 = 0; key0 < seqlenK; key0 += blockN)
        {
            int lastKey = Math.Min(key0 + blockN, seqlenK) - 1;
            int queryBegin = right >= 0 ? Math.Max(0, key0 - offset - right) : 0;
            int queryEnd = left >= 0 ? Math.Min(seqlenQ, lastKey - offset + left + 1) : seqlenQ;
            if (queryEnd <= queryBegin) continue;
            int blocks = (queryEnd - 1) / blockM - queryBegin / blockM + 1;
            pairs += blocks * (long)blockM * blockN;
        }
        return pairs;
    }
}
