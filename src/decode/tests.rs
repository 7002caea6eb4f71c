#[test]
fn observation_size() {
    eprintln!("size_of Observation = {}", std::mem::size_of::<super::Observation>());
}
