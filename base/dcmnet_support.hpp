// What the DICOM network clients (the worklist C-FIND, the console C-STORE) share: how an
// association is set up and how DCMTK's network conditions read to a person. Header-only: only
// modules that link DCMTK's dcmnet include it, so the base library itself does not depend on DCMTK.
#pragma once

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmnet/cond.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/dcmnet/scu.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

namespace ctagent::dcmnet {

// A condition's text on one line (DCMTK nests the TCP cause on a line of its own).
inline std::string OneLine(const OFCondition& cond) {
  std::string text = cond.text();
  for (std::size_t pos = text.find('\n'); pos != std::string::npos; pos = text.find('\n', pos)) {
    text.replace(pos, 1, "; ");
  }
  return text;
}

// Conditions that mean the peer could not be reached or the connection broke: worth a retry
// later, and reported as a network problem rather than a protocol one.
inline bool IsNetworkCondition(const OFCondition& cond) {
  if (cond == DIMSE_NODATAAVAILABLE || cond == DIMSE_RECEIVEFAILED || cond == DIMSE_SENDFAILED) return true;
  if (cond.module() != OFM_dcmnet) return false;
  switch (cond.code()) {
    case DULC_TCPINITERROR:
    case DULC_TCPIOERROR:
    case DULC_UNKNOWNHOST:
    case DULC_NETWORKCLOSED:
    case DULC_READTIMEOUT:
    case DULC_PEERABORTEDASSOCIATION:
    case DULC_REQUESTASSOCIATIONFAILED:
      return true;
    default:
      return false;
  }
}

// The peer, the AE titles and one timeout for the connect, the association and each DIMSE
// message. Non-blocking DIMSE, so that the timeout applies: a peer that stops answering fails
// the call instead of hanging it.
inline void ConfigureAssociation(DcmSCU& scu, const std::string& calling_ae, const std::string& called_ae,
                                 const std::string& host, std::uint16_t port, std::uint32_t timeout_s) {
  scu.setAETitle(calling_ae.c_str());
  scu.setPeerAETitle(called_ae.c_str());
  scu.setPeerHostName(host.c_str());
  scu.setPeerPort(port);
  const std::uint32_t timeout =
      std::min<std::uint32_t>(timeout_s, static_cast<std::uint32_t>(std::numeric_limits<Sint32>::max()));
  scu.setConnectionTimeout(static_cast<Sint32>(timeout));
  scu.setACSETimeout(timeout);
  scu.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
  scu.setDIMSETimeout(timeout);
}

}  // namespace ctagent::dcmnet
