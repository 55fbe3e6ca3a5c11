#include "agent/results/reidentify.hpp"

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcostrmb.h>
#include <dcmtk/dcmdata/dcstack.h>
#include <dcmtk/dcmdata/dcvrui.h>
#include <dcmtk/dcmdata/dcxfer.h>

#include <map>
#include <string>

namespace ctagent::results {
namespace {

std::string Text(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  if (item.findAndGetOFStringArray(tag, value).bad()) return "";
  std::string s = value.c_str();
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

Status Refuse(const std::string& why) {
  return MakeError(ErrorKind::kProtocol, "refused to re-identify: " + why +
                                             "; the object does not belong to this scan and is neither stored nor sent");
}

}  // namespace

Status Reidentify(DcmDataset& dataset, const privacy::MappingRecord& mapping) {
  // Which scan the object says it belongs to: its pseudonyms must be this scan's.
  if (Text(dataset, DCM_PatientID) != mapping.patient_id.pseudonymous) {
    return Refuse("its Patient ID (0010,0020) is not the pseudonym of scan " + mapping.scan_uid);
  }
  const std::string accession = Text(dataset, DCM_AccessionNumber);
  if (!accession.empty() && accession != mapping.accession_number.pseudonymous) {
    return Refuse("its Accession Number (0008,0050) is not the pseudonym of scan " + mapping.scan_uid);
  }
  std::map<std::string, std::string> real_of{{mapping.study_instance_uid.pseudonymous, mapping.study_instance_uid.real}};
  for (const privacy::MappingRecord::Pair& p : mapping.uids) real_of.emplace(p.pseudonymous, p.real);

  // Every UI value, at any depth: a study reference must be this scan's study, and every UID the
  // mapping remapped gets its real value back (the center's own UIDs stay as they are).
  DcmStack stack;
  std::vector<std::pair<DcmElement*, std::string>> replacements;
  while (dataset.nextObject(stack, OFTrue).good()) {
    DcmObject* object = stack.top();
    if (object->ident() != EVR_UI) continue;
    auto* element = static_cast<DcmElement*>(object);
    OFString value;
    if (element->getOFStringArray(value).bad()) continue;
    std::string uid = value.c_str();
    while (!uid.empty() && (uid.back() == '\0' || uid.back() == ' ')) uid.pop_back();
    const auto it = real_of.find(uid);
    if (element->getTag() == DCM_StudyInstanceUID && it == real_of.end()) {
      return Refuse("a Study Instance UID (0020,000D) in it is not scan " + mapping.scan_uid + "'s study");
    }
    if (it != real_of.end()) replacements.emplace_back(element, it->second);
  }
  if (Text(dataset, DCM_StudyInstanceUID).empty()) return Refuse("it has no Study Instance UID (0020,000D)");

  // Text in UTF-8 first (so the restored UTF-8 names and the object's own text agree with one
  // Specific Character Set), then the real values.
  if (OFCondition c = dataset.convertToUTF8(); c.bad()) {
    return MakeError(ErrorKind::kProtocol, std::string("refused to re-identify: its text could not be converted to UTF-8 "
                                                       "from its Specific Character Set (0008,0005): ") +
                                               c.text());
  }
  for (auto& [element, real] : replacements) {
    if (OFCondition c = element->putString(real.c_str()); c.bad()) {
      return MakeError(ErrorKind::kInternal, std::string("re-identifying a UID: ") + c.text());
    }
  }
  const std::pair<DcmTagKey, const std::string*> restored[] = {
      {DCM_PatientName, &mapping.patient_name},
      {DCM_PatientID, &mapping.patient_id.real},
      {DCM_PatientBirthDate, &mapping.patient_birth_date},
      {DCM_PatientSex, &mapping.patient_sex},
      {DCM_AccessionNumber, &mapping.accession_number.real},
      {DCM_SpecificCharacterSet, nullptr},
  };
  static const std::string kUtf8 = "ISO_IR 192";
  for (const auto& [tag, value] : restored) {
    const std::string& text = value ? *value : kUtf8;
    if (OFCondition c = dataset.putAndInsertString(tag, text.c_str()); c.bad()) {
      return MakeError(ErrorKind::kInternal, std::string("re-identifying ") + DcmTag(tag).getTagName() + ": " + c.text());
    }
  }
  return Ok();
}

Expected<std::vector<std::uint8_t>> ReidentifyPart10(std::span<const std::uint8_t> part10,
                                                     const privacy::MappingRecord& mapping) {
  DcmInputBufferStream in;
  in.setBuffer(part10.data(), static_cast<offile_off_t>(part10.size()));
  in.setEos();
  DcmFileFormat file;
  file.transferInit();
  const OFCondition read = file.read(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
  file.transferEnd();
  if (read.bad()) return MakeError(ErrorKind::kCorrupt, std::string("re-identifying: not DICOM Part 10: ") + read.text());
  DcmDataset* dataset = file.getDataset();
  if (auto st = Reidentify(*dataset, mapping); !st) return MakeError(st.error());

  E_TransferSyntax xfer = dataset->getOriginalXfer();
  if (xfer == EXS_Unknown) xfer = EXS_LittleEndianExplicit;
  // Room for the object and its meta header, whose lengths DCMTK computes; grown if short.
  std::size_t room = part10.size() + 64 * 1024 + mapping.patient_name.size() * 4;
  for (int attempt = 0; attempt < 4; ++attempt, room *= 2) {  // bounded: 4 doublings
    std::vector<std::uint8_t> out(room);
    DcmOutputBufferStream stream(out.data(), static_cast<offile_off_t>(out.size()));
    file.transferInit();
    const OFCondition wrote = file.write(stream, xfer, EET_ExplicitLength, nullptr);
    file.transferEnd();
    if (wrote == EC_StreamNotifyClient) continue;  // the buffer is full: a larger one
    if (wrote.bad()) return MakeError(ErrorKind::kInternal, std::string("writing the re-identified object: ") + wrote.text());
    void* data = nullptr;
    offile_off_t length = 0;
    stream.flushBuffer(data, length);
    out.resize(static_cast<std::size_t>(length));
    return out;
  }
  return MakeError(ErrorKind::kInternal, "writing the re-identified object: it grew past four times its size");
}

}  // namespace ctagent::results
