//! Distillation on a tiny random BERT: students cut from a teacher's layers, trained on the
//! teacher's probabilities (with unlabelled transfer texts), loadable as classifiers.

mod common;

use candle_core::Device;
use common::{ex, tiny_base, toy};
use frugal_train::classifier::{train, Classifier, Mode, SoftTargets, TrainSpec};
use frugal_train::data::Example;
use frugal_train::distill::{layer_count, size_of, write_student_base, Shrink};
use frugal_train::trainer::TrainConfig;

fn spec<'a>(
    base: &'a std::path::Path,
    data: &'a [Example],
    out: &'a std::path::Path,
    epochs: usize,
) -> TrainSpec<'a> {
    let config = TrainConfig {
        epochs,
        lr: 3e-3,
        batch: 8,
        patience: 0,
        ..Default::default()
    };
    let mut s = TrainSpec::new(base, "tiny", data, Mode::Full, config, out);
    s.max_len = Some(32);
    s
}

#[test]
fn a_student_keeps_the_chosen_layers_and_the_teachers_head() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (data, _) = toy();
    let teacher = dir.path().join("teacher");
    train(&spec(&base, &data, &teacher, 2), &mut |_| {}).unwrap();
    let student = dir.path().join("student");
    write_student_base(&teacher, &[1], None, &student).unwrap();
    assert_eq!(layer_count(&student).unwrap(), 1);
    let load = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (t, s) = (load(&teacher), load(&student));
    let same = |a: &str, b: &str| {
        let x = t[a].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        x == s[b].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let q = "encoder.layer.{}.attention.self.query.weight";
    assert!(same(&q.replace("{}", "1"), &q.replace("{}", "0")));
    assert!(!same(&q.replace("{}", "0"), &q.replace("{}", "0")));
    assert!(same("classifier.weight", "classifier.weight"));
    assert!(!s.contains_key(&q.replace("{}", "1")));
    let (tp, _) = size_of(&teacher).unwrap();
    let (sp, _) = size_of(&student).unwrap();
    assert!(sp < tp);
    // The student starts from the teacher's head.
    let clf = Classifier::new(&student, vec!["fruit".into(), "vehicle".into()], 7).unwrap();
    let w = clf.varmap.data().lock().unwrap()["classifier.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        w,
        t["classifier.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let e = write_student_base(&teacher, &[0, 2], None, &dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--keep 2") && e.contains("2 layers"), "{e}");
}

/// A narrower student: the leading rows and columns of every weight, loadable and trainable.
#[test]
fn a_narrower_student_is_cut_from_the_leading_heads() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (data, _) = toy();
    let teacher = dir.path().join("teacher");
    train(&spec(&base, &data, &teacher, 1), &mut |_| {}).unwrap();
    let student = dir.path().join("narrow");
    let shrink = Shrink {
        hidden: 16,
        intermediate: 32,
    };
    write_student_base(&teacher, &[0, 1], Some(shrink), &student).unwrap();
    let s =
        candle_core::safetensors::load(student.join("model.safetensors"), &Device::Cpu).unwrap();
    let t =
        candle_core::safetensors::load(teacher.join("model.safetensors"), &Device::Cpu).unwrap();
    let q = "encoder.layer.0.attention.self.query.weight";
    assert_eq!(s[q].dims(), [16, 16]);
    let want = t[q].narrow(0, 0, 16).unwrap().narrow(1, 0, 16).unwrap();
    assert_eq!(
        s[q].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_eq!(s["embeddings.word_embeddings.weight"].dims(), [30522, 16]);
    assert_eq!(s["embeddings.position_embeddings.weight"].dims(), [512, 16]);
    assert_eq!(
        s["encoder.layer.1.intermediate.dense.weight"].dims(),
        [32, 16]
    );
    assert_eq!(s["classifier.weight"].dims(), [2, 16]);
    let out = dir.path().join("narrow-trained");
    train(&spec(&student, &data, &out, 2), &mut |_| {}).unwrap();
    let (clf, _) = Classifier::load(&out).unwrap();
    assert_eq!(clf.encoder.dim(), 16);
    // Head size 8 (32 / 4 heads): 12 is not a whole number of heads.
    let bad = Shrink {
        hidden: 12,
        intermediate: 32,
    };
    let e = write_student_base(&teacher, &[0], Some(bad), &dir.path().join("y"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of the head size 8"), "{e}");
}

/// A student learns from soft targets alone on unlabelled texts (no gold label is given), and
/// learns them as probabilities: near the teacher's 0.9, not 1.
#[test]
fn a_student_learns_soft_targets_on_unlabelled_texts() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (data, _) = toy();
    let unlabelled: Vec<Example> = data.iter().map(|e| ex(&e.text, "")).collect();
    let probs: Vec<Vec<f32>> = data
        .iter()
        .map(|e| {
            if e.label == "fruit" {
                vec![0.9, 0.1]
            } else {
                vec![0.2, 0.8]
            }
        })
        .collect();
    let out = dir.path().join("student");
    let mut s = spec(&base, &unlabelled, &out, 25);
    s.labels = Some(vec!["fruit".into(), "vehicle".into()]);
    s.soft = Some(SoftTargets {
        probs: probs.clone(),
        temperature: 2.0,
        alpha: 0.5,
        teacher: "rule".into(),
    });
    let mut losses = vec![];
    let (_, info) = train(&s, &mut |p| losses.push(p.loss)).unwrap();
    assert_eq!(info.teacher.as_deref(), Some("rule"));
    let (clf, _) = Classifier::load(&out).unwrap();
    let m = clf.evaluate(&data, 8).unwrap();
    assert!(m.accuracy >= 0.9, "{}", m.accuracy);
    // Its probabilities approach the teacher's soft ones, not 0/1.
    let p = clf.predict(&[data[0].text.as_str()], 1).unwrap();
    assert!(p[0][0] > 0.6 && p[0][0] < 0.99, "{p:?}");
    // Without soft targets, unlabelled examples are refused; so are wrong shapes.
    let mut bad = spec(&base, &unlabelled, &out, 1);
    bad.labels = Some(vec!["fruit".into(), "vehicle".into()]);
    let e = train(&bad, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("empty label"), "{e}");
    bad.soft = Some(SoftTargets {
        probs: vec![vec![1.0]; unlabelled.len()],
        temperature: 2.0,
        alpha: 0.5,
        teacher: "rule".into(),
    });
    let e = train(&bad, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("one probability per label"), "{e}");
}

/// The real SmolLM2 as a labeller: one probability per label, summing to 1, and the obvious
/// label most likely for clear-cut texts.
#[test]
fn a_chat_model_labels_by_answer_likelihood() {
    use frugal_train::distill::{ChatLabeller, DEFAULT_PROMPT};
    let path = frugal_models::assets::Store::from_env()
        .ensure("smollm2")
        .unwrap();
    let model = frugal_models::chat::ChatModel::load(&path).unwrap();
    let labeller = ChatLabeller {
        prompt: DEFAULT_PROMPT.into(),
        words: vec!["fruit".into(), "vehicle".into()],
        max_text_tokens: 64,
        calibrate: true,
        scoring: frugal_train::labeller::Scoring::Answer,
    };
    let texts = [
        "I ate a sweet ripe banana",
        "I drove the truck to the garage",
    ];
    let mut seen = 0;
    let p = labeller.label(&model, &texts, &mut |d| seen = d).unwrap();
    assert_eq!(seen, 2);
    for q in &p {
        assert_eq!(q.len(), 2);
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{q:?}");
    }
    assert!(p[0][0] > p[0][1] && p[1][1] > p[1][0], "{p:?}");
    let bad = ChatLabeller {
        prompt: "no placeholder".into(),
        ..labeller
    };
    assert!(bad.label(&model, &texts, &mut |_| {}).is_err());
}

/// Channel scoring with the real SmolLM2: the text's likelihood after each label's words picks
/// the obvious label; it needs {text} at the end and refuses in-context examples.
#[test]
fn a_chat_model_labels_by_the_texts_likelihood_after_each_label() {
    use frugal_train::labeller::{ChatLabeller, Scoring, CHANNEL_PROMPT};
    let path = frugal_models::assets::Store::from_env()
        .ensure("smollm2")
        .unwrap();
    let model = frugal_models::chat::ChatModel::load(&path).unwrap();
    let labeller = ChatLabeller {
        prompt: CHANNEL_PROMPT.into(),
        words: vec![
            "a sentence about fruit".into(),
            "a sentence about vehicles".into(),
        ],
        max_text_tokens: 64,
        calibrate: false,
        scoring: Scoring::Channel,
    };
    let texts = [
        "I ate a sweet ripe banana and two apples",
        "I drove the truck to the garage and parked the car",
    ];
    let mut seen = 0;
    let p = labeller.label(&model, &texts, &mut |d| seen = d).unwrap();
    assert_eq!(seen, 2);
    for q in &p {
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{q:?}");
    }
    assert!(p[0][0] > p[0][1] && p[1][1] > p[1][0], "{p:?}");
    let bad = ChatLabeller {
        prompt: "{text} is {label}".into(),
        ..labeller.clone()
    };
    let e = bad.label(&model, &texts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("must end the prompt"), "{e}");
    let demos = vec![vec![("a pear".to_string(), 0)]; 2];
    let e = labeller
        .label_with_demos(&model, &texts, Some(&demos), &mut |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("answer scoring"), "{e}");
}

/// Hidden-state matching pulls the student's layer towards the teacher layer it imitates, and is
/// refused across tokenizers, with the reason.
#[test]
fn hidden_state_matching_pulls_the_student_towards_the_teacher() {
    use frugal_models::encoder::Encoder;
    use frugal_train::classifier::HiddenMatch;
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let (data, _) = toy();
    let teacher = dir.path().join("teacher");
    train(&spec(&base, &data, &teacher, 3), &mut |_| {}).unwrap();
    let student_base = dir.path().join("sb");
    write_student_base(&teacher, &[1], None, &student_base).unwrap();
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    let gap = |student: &std::path::Path| -> f32 {
        let (t, s) = (
            Encoder::load(&teacher).unwrap(),
            Encoder::load(student).unwrap(),
        );
        let ids: Vec<Vec<u32>> = t
            .tokenize(&texts)
            .unwrap()
            .into_iter()
            .map(|x| x.ids)
            .collect();
        let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
        let (ids, mask) = t.batch_tensors(&refs).unwrap();
        let a = t.model.forward_layers(&ids, &mask, true).unwrap();
        let b = s.model.forward_layers(&ids, &mask, true).unwrap();
        (&a[1] - &b[0])
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = gap(&student_base);
    let out = dir.path().join("student");
    let mut s = spec(&student_base, &data, &out, 10);
    s.hidden = Some(HiddenMatch {
        teacher: teacher.clone(),
        layers: vec![1],
        weight: 10.0,
    });
    train(&s, &mut |_| {}).unwrap();
    let after = gap(&out);
    assert!(after < before * 0.7, "gap {before} -> {after}");

    // Another tokenizer: refused, saying why.
    let other = dir.path().join("other-tok");
    std::fs::create_dir_all(other.join("1_Pooling")).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(student_base.join(f), other.join(f)).unwrap();
    }
    let tok = std::fs::read_to_string(student_base.join("tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&tok).unwrap();
    v["model"]["vocab"]["zz-not-a-token-zz"] = 30522.into();
    std::fs::write(
        other.join("tokenizer.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    assert!(!frugal_train::classifier::same_tokenizer(&teacher, &other));
    let mut s = spec(&other, &data, &out, 1);
    s.hidden = Some(HiddenMatch {
        teacher: teacher.clone(),
        layers: vec![1],
        weight: 1.0,
    });
    let e = train(&s, &mut |_| {}).err().unwrap().to_string();
    assert!(
        e.contains("same tokenizer") && e.contains("works across tokenizers"),
        "{e}"
    );
}
