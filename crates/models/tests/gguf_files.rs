//! The GGUF runtime on tiny random-initialised llama files written here (fast), and its errors
//! on files that are truncated, of another architecture or of an unsupported quantisation.

use candle_core::quantized::GgmlDType;
use frugal_models::chat::{ChatModel, GenerateOptions, SamplingParams};

use frugal_models::chat::testing::{write_tiny, Spec};

/// Writes a tiny model into `dir` and returns its path.
fn tiny(
    dir: &tempfile::TempDir,
    name: &str,
    arch: &'static str,
    wtype: GgmlDType,
) -> std::path::PathBuf {
    let path = dir.path().join(name);
    write_tiny(
        &path,
        Spec {
            arch,
            wtype,
            overrides: vec![],
        },
    );
    path
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        stop: vec![],
    }
}

#[test]
fn tiny_llama_loads_tokenizes_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(&dir, "tiny.gguf", "llama", GgmlDType::Q4_1);
    let m = ChatModel::load(&path).unwrap();
    let ids = m.tokenizer.encode("<|im_start|>hello 42").unwrap();
    assert_eq!(ids[0], 1, "special token parsed whole");
    assert_eq!(m.tokenizer.decode(&ids[1..], false).unwrap(), "hello 42");
    let mut streamed = String::new();
    let mut cache = m.new_cache();
    let g = m.generate(&ids, &greedy(10), &mut cache, &mut |p| {
        streamed.push_str(p);
        true
    });
    let g = g.unwrap();
    assert!(g.completion_tokens >= 1);
    assert_eq!(streamed, g.text, "streamed pieces add up to the text");
    // A second turn reuses the cache: the same prompt gives the same greedy answer.
    let mut cache2 = m.new_cache();
    let again = m
        .generate(&ids, &greedy(10), &mut cache2, &mut |_| true)
        .unwrap();
    assert_eq!(again.token_ids, g.token_ids);
    let mut longer = ids.clone();
    longer.extend(&g.token_ids);
    let cont = m
        .generate(&longer, &greedy(3), &mut cache, &mut |_| true)
        .unwrap();
    assert_eq!(cont.prompt_tokens, longer.len());
    // The context window is 64: a longer prompt is refused.
    let too_long = vec![5u32; 80];
    let err = m
        .generate(&too_long, &greedy(1), &mut m.new_cache(), &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("context window"), "{err}");
}

#[test]
fn q8_0_and_f16_weights_run_too() {
    for ty in [GgmlDType::Q8_0, GgmlDType::F16, GgmlDType::Q4_0] {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny(&dir, "tiny.gguf", "llama", ty);
        let m = ChatModel::load(&path).unwrap();
        let g = m
            .generate(&[3, 4, 5], &greedy(4), &mut m.new_cache(), &mut |_| true)
            .unwrap();
        assert!(g.completion_tokens >= 1, "{ty:?}");
    }
}

#[test]
fn weight_types_may_differ_between_q_k_v_and_gate_up() {
    let dir = tempfile::tempdir().unwrap();
    for (base, other) in [
        (GgmlDType::Q8_0, GgmlDType::F32),
        (GgmlDType::F32, GgmlDType::Q4_1),
    ] {
        let path = dir.path().join("mixed.gguf");
        let overrides = vec![("attn_q", other), ("attn_v", other), ("ffn_up", other)];
        write_tiny(
            &path,
            Spec {
                arch: "llama",
                wtype: base,
                overrides,
            },
        );
        let m = ChatModel::load(&path).unwrap();
        // Used to read past the activations quantised for Q when K needed another encoding.
        let g = m.generate(
            &[3, 4, 5, 6, 7],
            &greedy(4),
            &mut m.new_cache(),
            &mut |_| true,
        );
        assert_eq!(g.unwrap().prompt_tokens, 5, "{base:?} with {other:?}");
    }
}

#[test]
fn other_architectures_and_quantisations_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(&dir, "gpt.gguf", "gpt2", GgmlDType::Q4_1);
    let err = ChatModel::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("unsupported model architecture 'gpt2'") && err.contains("llama"),
        "{err}"
    );
    let path = tiny(&dir, "bf16.gguf", "llama", GgmlDType::BF16);
    let err = ChatModel::load(&path).err().unwrap().to_string();
    assert!(err.contains("BF16") && err.contains("Q4_1"), "{err}");
}

#[test]
fn truncated_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(&dir, "tiny.gguf", "llama", GgmlDType::Q4_1);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 100, 2000, 10] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = ChatModel::load(&path).err().unwrap().to_string();
        assert!(
            err.contains("truncated") || err.contains("GGUF"),
            "cut at {cut}: {err}"
        );
    }
}
